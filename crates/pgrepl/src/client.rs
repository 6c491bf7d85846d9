//! Replication commands on a `replication=database` connection.

use crate::config::Config;
use crate::conn::{self, parse_error, Conn};
use crate::ReplError;
use pgoutput::Lsn;
use postgres_protocol::message::frontend;
use std::time::Duration;

/// Result of `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's unique system identifier.
    pub system_id: String,
    /// Current timeline.
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlog_pos: Lsn,
    /// Connected database.
    pub dbname: Option<String>,
}

/// What `CREATE_REPLICATION_SLOT` does with the snapshot it builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlotSnapshot {
    /// Export it for other sessions (`SET TRANSACTION SNAPSHOT`) until the next command on
    /// this connection: the way to copy tables consistently with the slot's start.
    Export,
    /// Do not export a snapshot.
    #[default]
    Nothing,
}

/// Options of `CREATE_REPLICATION_SLOT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CreateSlotOptions {
    /// Dropped when the connection ends.
    pub temporary: bool,
    /// Decode prepared transactions at PREPARE time (PostgreSQL 15+).
    pub two_phase: bool,
    /// Snapshot handling.
    pub snapshot: SlotSnapshot,
}

/// Result of `CREATE_REPLICATION_SLOT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// Slot name.
    pub slot_name: String,
    /// First LSN the slot can stream from; the exported snapshot sees everything before it.
    pub consistent_point: Lsn,
    /// Exported snapshot name, with [`SlotSnapshot::Export`].
    pub snapshot_name: Option<String>,
    /// Output plugin.
    pub output_plugin: Option<String>,
}

/// Whether to stream large in-progress transactions (pgoutput `streaming`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Streaming {
    /// Send transactions only when committed.
    #[default]
    Off,
    /// Stream in-progress transactions past `logical_decoding_work_mem` (protocol v2+).
    On,
    /// As `On`, with abort LSN/time in Stream Abort (protocol v4+).
    Parallel,
}

/// Options of `START_REPLICATION ... LOGICAL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartOptions {
    /// Publications to stream.
    pub publication_names: Vec<String>,
    /// Protocol version; `None` picks the newest the server supports.
    pub proto_version: Option<u32>,
    /// In-progress transaction streaming.
    pub streaming: Streaming,
    /// Deliver `pg_logical_emit_message` messages.
    pub messages: bool,
    /// Send column values in binary form where the type allows.
    pub binary: bool,
    /// Decode prepared transactions at PREPARE (protocol v3+).
    pub two_phase: bool,
    /// Interval between unsolicited standby status updates.
    pub status_interval: Duration,
}

impl StartOptions {
    /// Defaults for `publication`: newest protocol, streaming on, messages off, text values.
    pub fn new(publication: impl Into<String>) -> Self {
        StartOptions {
            publication_names: vec![publication.into()],
            proto_version: None,
            streaming: Streaming::On,
            messages: false,
            binary: false,
            two_phase: false,
            status_interval: Duration::from_secs(10),
        }
    }
}

/// The pgoutput protocol version a server supports best, from `server_version_num`.
pub fn newest_proto_version(server_version_num: u32) -> u32 {
    match server_version_num {
        v if v >= 160_000 => 4,
        v if v >= 150_000 => 3,
        v if v >= 140_000 => 2,
        _ => 1,
    }
}

/// Result rows of a simple query, as text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryResult {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows; `None` is SQL NULL.
    pub rows: Vec<Vec<Option<String>>>,
}

/// A replication connection (`replication=database`) in command mode.
pub struct ReplicationClient {
    pub(crate) conn: Conn,
    config: Config,
}

impl std::fmt::Debug for ReplicationClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationClient")
            .field("target", &self.config.target())
            .finish()
    }
}

/// Quotes an identifier for a replication command.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl ReplicationClient {
    /// Connects and authenticates.
    pub async fn connect(config: &Config) -> Result<Self, ReplError> {
        let conn = conn::connect(config, true).await?;
        tracing::debug!(target = %config.target(), tls = conn.tls, "replication connection established");
        Ok(ReplicationClient {
            conn,
            config: config.clone(),
        })
    }

    /// Connects a normal (non-replication) session with the same settings: for catalog
    /// queries and the initial copy's `COPY` in an exported snapshot. Replication commands
    /// are refused on it by the server.
    pub async fn connect_sql(config: &Config) -> Result<Self, ReplError> {
        let conn = conn::connect(config, false).await?;
        tracing::debug!(target = %config.target(), tls = conn.tls, "SQL connection established");
        Ok(ReplicationClient {
            conn,
            config: config.clone(),
        })
    }

    /// The settings this client connected with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.conn.tls
    }

    /// A server parameter reported at startup (`server_version`, `TimeZone`, …).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.conn.params.get(name).map(String::as_str)
    }

    /// `server_version_num` (e.g. 150018), parsed from the startup `server_version`.
    pub fn server_version_num(&self) -> Option<u32> {
        let v = self.parameter("server_version")?;
        let mut parts = v.split(|c: char| !c.is_ascii_digit());
        let major: u32 = parts.next()?.parse().ok()?;
        let minor: u32 = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
        Some(if major >= 10 {
            major * 10_000 + minor
        } else {
            major * 10_000 + minor * 100
        })
    }

    /// Runs a command with the simple query protocol and returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<QueryResult, ReplError> {
        frontend::query(sql, &mut self.conn.wbuf)?;
        self.conn.flush().await?;
        let mut res = QueryResult::default();
        let mut err = None;
        loop {
            let f = self.conn.read_frame().await?;
            match f.tag {
                b'T' => res.columns = parse_row_description(&f.body)?,
                b'D' => res.rows.push(parse_data_row(&f.body)?),
                b'E' => err = Some(ReplError::Server(parse_error(&f.body))),
                b'Z' => return err.map_or(Ok(res), Err),
                b'C' | b'I' | b'N' | b'S' => {}
                b'W' | b'H' | b'G' => {
                    return Err(ReplError::Protocol(
                        "simple_query started a COPY; use start_replication for streaming commands".into(),
                    ))
                }
                other => return Err(ReplError::Protocol(format!("unexpected message '{}'", other as char))),
            }
        }
    }

    /// Runs a `COPY ... TO STDOUT` and hands each CopyData payload to `on_data` (PostgreSQL
    /// sends one row per message, but callers must not rely on it). If `on_data` fails, the rest
    /// of the output is drained and discarded and its error is returned as
    /// [`ReplError::Protocol`].
    pub async fn copy_out(
        &mut self,
        sql: &str,
        mut on_data: impl FnMut(bytes::Bytes) -> Result<(), String>,
    ) -> Result<(), ReplError> {
        frontend::query(sql, &mut self.conn.wbuf)?;
        self.conn.flush().await?;
        let mut err: Option<ReplError> = None;
        loop {
            let f = self.conn.read_frame().await?;
            match f.tag {
                b'd' => {
                    if err.is_none() {
                        if let Err(e) = on_data(f.body) {
                            err = Some(ReplError::Protocol(e));
                        }
                    }
                }
                b'E' => err = Some(ReplError::Server(parse_error(&f.body))),
                b'Z' => return err.map_or(Ok(()), Err),
                b'H' | b'c' | b'C' | b'N' | b'S' | b'T' | b'D' => {}
                other => {
                    return Err(ReplError::Protocol(format!(
                        "unexpected message '{}' during COPY",
                        other as char
                    )))
                }
            }
        }
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, ReplError> {
        let r = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = r
            .rows
            .first()
            .ok_or_else(|| ReplError::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
        let get = |i: usize| row.get(i).cloned().flatten();
        Ok(SystemIdentity {
            system_id: get(0).unwrap_or_default(),
            timeline: get(1).and_then(|t| t.parse().ok()).unwrap_or(0),
            xlog_pos: parse_lsn(get(2))?,
            dbname: get(3),
        })
    }

    /// `CREATE_REPLICATION_SLOT name LOGICAL pgoutput`.
    pub async fn create_slot(&mut self, name: &str, opts: CreateSlotOptions) -> Result<CreatedSlot, ReplError> {
        let modern = self.server_version_num().unwrap_or(150_000) >= 150_000;
        let mut sql = format!("CREATE_REPLICATION_SLOT {}", quote_ident(name));
        if opts.temporary {
            sql.push_str(" TEMPORARY");
        }
        sql.push_str(" LOGICAL pgoutput");
        if modern {
            let snap = match opts.snapshot {
                SlotSnapshot::Export => "export",
                SlotSnapshot::Nothing => "nothing",
            };
            sql.push_str(&format!(" (SNAPSHOT '{snap}'"));
            if opts.two_phase {
                sql.push_str(", TWO_PHASE true");
            }
            sql.push(')');
        } else {
            if opts.two_phase {
                return Err(ReplError::Unsupported(
                    "two-phase slots need PostgreSQL 15 or newer".into(),
                ));
            }
            sql.push_str(match opts.snapshot {
                SlotSnapshot::Export => " EXPORT_SNAPSHOT",
                SlotSnapshot::Nothing => " NOEXPORT_SNAPSHOT",
            });
        }
        let r = self.simple_query(&sql).await?;
        let row = r
            .rows
            .first()
            .ok_or_else(|| ReplError::Protocol("CREATE_REPLICATION_SLOT returned no row".into()))?;
        let get = |i: usize| row.get(i).cloned().flatten();
        Ok(CreatedSlot {
            slot_name: get(0).unwrap_or_default(),
            consistent_point: parse_lsn(get(1))?,
            snapshot_name: get(2),
            output_plugin: get(3),
        })
    }

    /// `DROP_REPLICATION_SLOT name [WAIT]`.
    pub async fn drop_slot(&mut self, name: &str, wait: bool) -> Result<(), ReplError> {
        let sql = format!(
            "DROP_REPLICATION_SLOT {}{}",
            quote_ident(name),
            if wait { " WAIT" } else { "" }
        );
        self.simple_query(&sql).await.map(|_| ())
    }

    /// Ends the session politely.
    pub async fn close(mut self) {
        self.conn.shutdown().await;
    }
}

fn parse_lsn(s: Option<String>) -> Result<Lsn, ReplError> {
    let s = s.ok_or_else(|| ReplError::Protocol("missing LSN in reply".into()))?;
    s.parse().map_err(|e| ReplError::Protocol(format!("{e}")))
}

fn parse_row_description(b: &[u8]) -> Result<Vec<String>, ReplError> {
    let bad = || ReplError::Protocol("malformed RowDescription".into());
    let n = u16::from_be_bytes(b.get(..2).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
    let mut rest = &b[2..];
    let mut cols = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let end = rest.iter().position(|&c| c == 0).ok_or_else(bad)?;
        cols.push(String::from_utf8_lossy(&rest[..end]).into_owned());
        rest = rest.get(end + 1 + 18..).ok_or_else(bad)?;
    }
    Ok(cols)
}

fn parse_data_row(b: &[u8]) -> Result<Vec<Option<String>>, ReplError> {
    let bad = || ReplError::Protocol("malformed DataRow".into());
    let n = u16::from_be_bytes(b.get(..2).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
    let mut at = 2;
    let mut row = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let len = i32::from_be_bytes(b.get(at..at + 4).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        at += 4;
        if len < 0 {
            row.push(None);
        } else {
            let v = b.get(at..at + len as usize).ok_or_else(bad)?;
            row.push(Some(String::from_utf8_lossy(v).into_owned()));
            at += len as usize;
        }
    }
    Ok(row)
}
