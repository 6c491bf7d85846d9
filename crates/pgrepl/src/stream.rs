//! The CopyBoth phase: XLogData and keepalives from the server, standby status updates to it.

use crate::client::{newest_proto_version, quote_ident, quote_literal, ReplicationClient, StartOptions, Streaming};
use crate::conn::parse_error;
use crate::ReplError;
use bytes::{BufMut, Bytes, BytesMut};
use pgoutput::{Lsn, PgTimestamp};
use postgres_protocol::message::frontend;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// One message from the server while streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationEvent {
    /// `w`: a chunk of decoded WAL, here one pgoutput message.
    XLogData {
        /// WAL position of this message.
        start: Lsn,
        /// Current end of WAL on the server.
        wal_end: Lsn,
        /// Server clock when sent.
        server_time: PgTimestamp,
        /// The pgoutput message.
        data: Bytes,
    },
    /// `k`: primary keepalive.
    Keepalive {
        /// Current end of WAL on the server.
        wal_end: Lsn,
        /// Server clock when sent.
        server_time: PgTimestamp,
        /// The server wants a status update now (already sent by the stream before it returns
        /// this event).
        reply_requested: bool,
    },
}

/// What [`ReplicationStream::next_before`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// A message from the server.
    Event(ReplicationEvent),
    /// The deadline passed first.
    Deadline,
    /// The server ended the stream.
    Ended,
}

/// Positions reported in standby status updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Feedback {
    /// Received and written.
    pub write: Lsn,
    /// Durable on our side: the server may discard WAL before it (the slot's
    /// `confirmed_flush_lsn`).
    pub flush: Lsn,
    /// Applied.
    pub apply: Lsn,
}

/// A logical replication stream. Call [`ReplicationStream::next`] in a loop; it also sends
/// standby status updates when the server asks and every `status_interval`, reporting the
/// positions set with [`ReplicationStream::set_flushed`]. Nothing is confirmed unless the
/// caller says so.
pub struct ReplicationStream {
    client: ReplicationClient,
    proto_version: u32,
    status_interval: Duration,
    next_status: Instant,
    feedback: Feedback,
    received: Lsn,
    server_done: bool,
}

impl std::fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("proto_version", &self.proto_version)
            .field("feedback", &self.feedback)
            .field("received", &self.received)
            .finish()
    }
}

fn now_pg() -> i64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as i64;
    PgTimestamp::from_unix_micros(unix).0
}

impl ReplicationStream {
    pub(crate) fn new(client: ReplicationClient, start: Lsn, proto_version: u32, status_interval: Duration) -> Self {
        ReplicationStream {
            client,
            proto_version,
            status_interval,
            next_status: Instant::now() + status_interval,
            // Flush 0 confirms nothing (the server ignores an invalid position) until the
            // caller declares what is durable.
            feedback: Feedback {
                write: start,
                flush: Lsn(0),
                apply: Lsn(0),
            },
            received: start,
            server_done: false,
        }
    }

    /// The negotiated pgoutput protocol version.
    pub fn proto_version(&self) -> u32 {
        self.proto_version
    }

    /// Whether the next message is already received (reading it needs no I/O): lets a
    /// consumer batch work while more is immediately available.
    pub fn has_buffered(&self) -> bool {
        self.client.conn.has_frame()
    }

    /// Highest WAL position received so far.
    pub fn received(&self) -> Lsn {
        self.received
    }

    /// Positions reported in status updates.
    pub fn feedback(&self) -> Feedback {
        self.feedback
    }

    /// Declares everything up to `lsn` durable and applied; later status updates confirm it.
    /// Never moves backwards.
    pub fn set_flushed(&mut self, lsn: Lsn) {
        self.feedback.flush = self.feedback.flush.max(lsn);
        self.feedback.apply = self.feedback.apply.max(lsn);
        self.feedback.write = self.feedback.write.max(lsn);
    }

    /// Sends a standby status update now with the current positions.
    pub async fn send_status(&mut self, reply_requested: bool) -> Result<(), ReplError> {
        self.feedback.write = self.feedback.write.max(self.received).max(self.feedback.flush);
        let mut body = BytesMut::with_capacity(34);
        body.put_u8(b'r');
        body.put_u64(self.feedback.write.0);
        body.put_u64(self.feedback.flush.0);
        body.put_u64(self.feedback.apply.0);
        body.put_i64(now_pg());
        body.put_u8(u8::from(reply_requested));
        frontend::CopyData::new(body.freeze())?.write(&mut self.client.conn.wbuf);
        self.client.conn.flush().await?;
        self.next_status = Instant::now() + self.status_interval;
        tracing::trace!(flush = %self.feedback.flush, "sent standby status update");
        Ok(())
    }

    /// The next event, or `None` once the server has ended the stream.
    pub async fn next(&mut self) -> Result<Option<ReplicationEvent>, ReplError> {
        match self.next_before(None).await? {
            Next::Event(e) => Ok(Some(e)),
            Next::Ended | Next::Deadline => Ok(None),
        }
    }

    /// As [`ReplicationStream::next`], but returns [`Next::Deadline`] once `deadline` passes
    /// with no event, so a caller can do periodic work without cancelling a read (status
    /// updates keep going out meanwhile).
    pub async fn next_before(&mut self, deadline: Option<Instant>) -> Result<Next, ReplError> {
        loop {
            if self.server_done {
                return Ok(Next::Ended);
            }
            // A frame already read (a busy stream delivers many per read) is taken without
            // arming timers, unless a status update is due.
            let frame = if self.client.conn.has_frame() && Instant::now() < self.next_status {
                self.client.conn.read_frame().await?
            } else {
                let deadline = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
                tokio::select! {
                    f = self.client.conn.read_frame() => f?,
                    _ = tokio::time::sleep_until(self.next_status) => {
                        self.send_status(false).await?;
                        continue;
                    }
                    _ = tokio::time::sleep_until(deadline) => return Ok(Next::Deadline),
                }
            };
            match frame.tag {
                b'd' => {
                    let b = frame.body;
                    let bad = |what: &str| ReplError::Protocol(format!("malformed {what} message"));
                    let be64 =
                        |at: usize| -> Option<u64> { Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?)) };
                    match b.first() {
                        Some(b'w') => {
                            let (start, end, time) = match (be64(1), be64(9), be64(17)) {
                                (Some(s), Some(e), Some(t)) => (s, e, t),
                                _ => return Err(bad("XLogData")),
                            };
                            let data = b.slice(25..);
                            self.received = self.received.max(Lsn(start)).max(Lsn(end));
                            return Ok(Next::Event(ReplicationEvent::XLogData {
                                start: Lsn(start),
                                wal_end: Lsn(end),
                                server_time: PgTimestamp(time as i64),
                                data,
                            }));
                        }
                        Some(b'k') => {
                            let (end, time, reply) = match (be64(1), be64(9), b.get(17)) {
                                (Some(e), Some(t), Some(r)) => (e, t, *r != 0),
                                _ => return Err(bad("keepalive")),
                            };
                            if reply {
                                self.send_status(false).await?;
                            }
                            return Ok(Next::Event(ReplicationEvent::Keepalive {
                                wal_end: Lsn(end),
                                server_time: PgTimestamp(time as i64),
                                reply_requested: reply,
                            }));
                        }
                        other => {
                            return Err(ReplError::Protocol(format!(
                                "unknown CopyData message type {other:?} in replication stream"
                            )))
                        }
                    }
                }
                b'c' => {
                    // The server ended the stream; acknowledge and return to command mode.
                    frontend::copy_done(&mut self.client.conn.wbuf);
                    self.client.conn.flush().await?;
                    self.client.conn.drain_until_ready().await?;
                    self.server_done = true;
                }
                b'E' => return Err(ReplError::Server(parse_error(&frame.body))),
                b'N' | b'S' => {}
                other => {
                    return Err(ReplError::Protocol(format!(
                        "unexpected message '{}' in replication stream",
                        other as char
                    )))
                }
            }
        }
    }

    /// Sends a final status update, ends streaming with CopyDone and returns the connection to
    /// command mode. Data still in flight is discarded (it stays unconfirmed on the server).
    pub async fn stop(mut self) -> Result<ReplicationClient, ReplError> {
        if !self.server_done {
            self.send_status(false).await?;
            frontend::copy_done(&mut self.client.conn.wbuf);
            self.client.conn.flush().await?;
            let drain = async {
                loop {
                    let f = self.client.conn.read_frame().await?;
                    match f.tag {
                        b'Z' => return Ok(()),
                        b'E' => {
                            let e = ReplError::Server(parse_error(&f.body));
                            self.client.conn.drain_until_ready().await?;
                            return Err(e);
                        }
                        _ => {}
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(30), drain)
                .await
                .map_err(|_| {
                    ReplError::Protocol("server did not finish the stream within 30 s of CopyDone".into())
                })??;
        }
        Ok(self.client)
    }
}

/// Starting to stream lives here, with the stream, so the client module does not depend on it.
impl ReplicationClient {
    /// `START_REPLICATION SLOT name LOGICAL start (...)`: switches the connection to streaming.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: Lsn,
        opts: &StartOptions,
    ) -> Result<ReplicationStream, ReplError> {
        let server = self.server_version_num().unwrap_or(100_000);
        let newest = newest_proto_version(server);
        let proto = match opts.proto_version {
            Some(v) if v > newest => {
                return Err(ReplError::Unsupported(format!(
                    "pgoutput protocol version {v} needs a newer server (this one, {server}, supports up to {newest})"
                )))
            }
            Some(v) => v,
            None => newest,
        };
        let pubs = opts
            .publication_names
            .iter()
            .map(|p| quote_ident(p))
            .collect::<Vec<_>>()
            .join(",");
        let mut o = vec![("proto_version", proto.to_string()), ("publication_names", pubs)];
        match opts.streaming {
            Streaming::Off => {}
            Streaming::On if proto >= 2 => o.push(("streaming", "on".into())),
            Streaming::Parallel if proto >= 4 => o.push(("streaming", "parallel".into())),
            Streaming::Parallel if proto >= 2 => o.push(("streaming", "on".into())),
            _ => {}
        }
        if opts.messages {
            o.push(("messages", "true".into()));
        }
        if opts.binary {
            o.push(("binary", "true".into()));
        }
        if opts.two_phase {
            if proto < 3 {
                return Err(ReplError::Unsupported(
                    "two_phase needs protocol version 3 (PostgreSQL 15+)".into(),
                ));
            }
            o.push(("two_phase", "on".into()));
        }
        let opts_sql = o
            .iter()
            .map(|(k, v)| format!("{} {}", quote_ident(k), quote_literal(v)))
            .collect::<Vec<_>>();
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} ({})",
            quote_ident(slot),
            start,
            opts_sql.join(", ")
        );
        tracing::debug!(%sql, "starting replication");
        frontend::query(&sql, &mut self.conn.wbuf)?;
        self.conn.flush().await?;
        loop {
            let f = self.conn.read_frame().await?;
            match f.tag {
                b'W' => break,
                b'E' => {
                    let e = ReplError::Server(parse_error(&f.body));
                    let _ = self.conn.drain_until_ready().await;
                    return Err(e);
                }
                b'N' | b'S' => {}
                other => {
                    return Err(ReplError::Protocol(format!(
                        "expected CopyBothResponse after START_REPLICATION, got '{}'",
                        other as char
                    )))
                }
            }
        }
        Ok(ReplicationStream::new(self, start, proto, opts.status_interval))
    }
}
