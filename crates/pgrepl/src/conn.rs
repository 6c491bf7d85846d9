//! The byte level: a TCP, Unix or TLS socket, backend message framing, startup and
//! authentication (trust, cleartext, md5, SCRAM-SHA-256 via `postgres-protocol`).

use crate::config::{Config, Host, SslMode};
use crate::error::{ReplError, ServerError};
use crate::tls;
use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// Largest backend message accepted (PostgreSQL's own limit for a message is 1 GB).
const MAX_MESSAGE: usize = 1 << 30;

pub(crate) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One backend message: its type byte and body (without the length word).
#[derive(Debug)]
pub(crate) struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// A framed connection to the server.
pub(crate) struct Conn {
    socket: Socket,
    rbuf: BytesMut,
    pub(crate) wbuf: BytesMut,
    pub(crate) params: HashMap<String, String>,
    pub(crate) tls: bool,
}

impl Conn {
    /// Reads the next backend message. Cancel-safe: bytes already read stay buffered.
    pub(crate) async fn read_frame(&mut self) -> Result<Frame, ReplError> {
        loop {
            if self.rbuf.len() >= 5 {
                let len = u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]) as usize;
                if !(4..=MAX_MESSAGE).contains(&len) {
                    return Err(ReplError::Protocol(format!(
                        "backend message with invalid length {len}"
                    )));
                }
                if self.rbuf.len() > len {
                    let tag = self.rbuf[0];
                    self.rbuf.advance(5);
                    let body = self.rbuf.split_to(len - 4).freeze();
                    return Ok(Frame { tag, body });
                }
                self.rbuf.reserve(len + 1 - self.rbuf.len());
            } else {
                // Large reads: a busy stream delivers thousands of small messages per read.
                self.rbuf.reserve(256 * 1024);
            }
            let n = self.socket.read_buf(&mut self.rbuf).await?;
            if n == 0 {
                return Err(ReplError::Closed);
            }
        }
    }

    /// Whether a complete message is already buffered (the next read needs no I/O).
    pub(crate) fn has_frame(&self) -> bool {
        if self.rbuf.len() < 5 {
            return false;
        }
        let len = u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]) as usize;
        self.rbuf.len() > len
    }

    /// Writes out everything queued in `wbuf`.
    pub(crate) async fn flush(&mut self) -> Result<(), ReplError> {
        if !self.wbuf.is_empty() {
            self.socket.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        self.socket.flush().await?;
        Ok(())
    }

    /// Reads frames until `ReadyForQuery`, turning an `ErrorResponse` into an error.
    pub(crate) async fn drain_until_ready(&mut self) -> Result<(), ReplError> {
        let mut err = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'Z' => return err.map_or(Ok(()), Err),
                b'E' => err = Some(ReplError::Server(parse_error(&f.body))),
                _ => {}
            }
        }
    }

    pub(crate) async fn shutdown(&mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.flush().await;
        let _ = self.socket.shutdown().await;
    }
}

/// Parses the fields of an `ErrorResponse` / `NoticeResponse` body.
pub(crate) fn parse_error(body: &[u8]) -> ServerError {
    let mut e = ServerError::default();
    let mut rest = body;
    while let Some((&t, tail)) = rest.split_first() {
        if t == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let v = String::from_utf8_lossy(&tail[..end]).into_owned();
        match t {
            b'V' => e.severity = v,
            b'S' if e.severity.is_empty() => e.severity = v,
            b'C' => e.code = v,
            b'M' => e.message = v,
            b'D' => e.detail = Some(v),
            b'H' => e.hint = Some(v),
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    e
}

fn be_i32(b: &[u8]) -> Option<i32> {
    Some(i32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// Opens the socket, negotiates TLS, sends the startup packet and authenticates.
pub(crate) async fn connect(config: &Config, replication: bool) -> Result<Conn, ReplError> {
    let target = config.target();
    let timeout = config.connect_timeout;
    let fut = async {
        let socket = match &config.host {
            Host::Tcp(h) => {
                let tcp = TcpStream::connect((h.as_str(), config.port))
                    .await
                    .map_err(|source| ReplError::Connect {
                        target: target.clone(),
                        source,
                    })?;
                let _ = tcp.set_nodelay(true);
                negotiate_tls(tcp, config).await?
            }
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{}", config.port));
                (
                    Socket::Unix(UnixStream::connect(&path).await.map_err(|source| ReplError::Connect {
                        target: target.clone(),
                        source,
                    })?),
                    false,
                )
            }
        };
        let mut conn = Conn {
            socket: socket.0,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::new(),
            params: HashMap::new(),
            tls: socket.1,
        };
        startup(&mut conn, config, replication).await?;
        Ok(conn)
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ReplError::ConnectTimeout {
            target,
            secs: timeout.as_secs(),
        }),
    }
}

async fn negotiate_tls(mut tcp: TcpStream, config: &Config) -> Result<(Socket, bool), ReplError> {
    if config.ssl_mode == SslMode::Disable {
        return Ok((Socket::Tcp(tcp), false));
    }
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    tcp.write_all(&buf).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {
            let host = match &config.host {
                Host::Tcp(h) => h.clone(),
                Host::Unix(_) => "localhost".into(),
            };
            let tls = tls::handshake(tcp, &host, config).await?;
            Ok((Socket::Tls(Box::new(tls)), true))
        }
        b'N' if config.ssl_mode == SslMode::Prefer => Ok((Socket::Tcp(tcp), false)),
        b'N' => Err(ReplError::Tls(format!(
            "the server at {} does not accept TLS connections but sslmode={} requires TLS (enable ssl on the server or lower sslmode)",
            config.target(),
            config.ssl_mode
        ))),
        other => Err(ReplError::Protocol(format!("unexpected answer 0x{other:02x} to the SSL request"))),
    }
}

async fn startup(conn: &mut Conn, config: &Config, replication: bool) -> Result<(), ReplError> {
    let mut params: Vec<(&str, &str)> = vec![
        ("user", &config.user),
        ("database", &config.dbname),
        ("client_encoding", "UTF8"),
    ];
    if replication {
        params.push(("replication", "database"));
    }
    if let Some(a) = &config.application_name {
        params.push(("application_name", a));
    }
    if let Some(o) = &config.options {
        params.push(("options", o));
    }
    frontend::startup_message(params.iter().copied(), &mut conn.wbuf)?;
    conn.flush().await?;

    let mut scram: Option<ScramSha256> = None;
    let password = || {
        config.password.as_ref().map(|p| p.expose().as_bytes()).ok_or_else(|| {
            ReplError::Auth(format!(
                "the server asks user {:?} for a password but none was given (set it in the connection string or PGPASSWORD)",
                config.user
            ))
        })
    };
    loop {
        let f = conn.read_frame().await?;
        match f.tag {
            b'R' => {
                let code = be_i32(&f.body).ok_or_else(|| ReplError::Protocol("short authentication message".into()))?;
                match code {
                    0 => {}
                    3 => {
                        frontend::password_message(password()?, &mut conn.wbuf)?;
                        conn.flush().await?;
                    }
                    5 => {
                        let salt: [u8; 4] = f
                            .body
                            .get(4..8)
                            .and_then(|s| s.try_into().ok())
                            .ok_or_else(|| ReplError::Protocol("short MD5 salt".into()))?;
                        let hash = postgres_protocol::authentication::md5_hash(config.user.as_bytes(), password()?, salt);
                        frontend::password_message(hash.as_bytes(), &mut conn.wbuf)?;
                        conn.flush().await?;
                    }
                    10 => {
                        let mechs: Vec<&[u8]> = f.body[4..].split(|&b| b == 0).filter(|m| !m.is_empty()).collect();
                        if !mechs.contains(&SCRAM_SHA_256.as_bytes()) {
                            return Err(ReplError::Auth(format!(
                                "the server offers SASL mechanisms {:?}; only SCRAM-SHA-256 is supported",
                                mechs.iter().map(|m| String::from_utf8_lossy(m)).collect::<Vec<_>>()
                            )));
                        }
                        let s = ScramSha256::new(password()?, ChannelBinding::unsupported());
                        frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut conn.wbuf)?;
                        conn.flush().await?;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram.as_mut().ok_or_else(|| ReplError::Protocol("SASLContinue before SASL".into()))?;
                        s.update(&f.body[4..]).map_err(|e| ReplError::Auth(format!("SCRAM exchange failed: {e}")))?;
                        frontend::sasl_response(s.message(), &mut conn.wbuf)?;
                        conn.flush().await?;
                    }
                    12 => {
                        let s = scram.as_mut().ok_or_else(|| ReplError::Protocol("SASLFinal before SASL".into()))?;
                        s.finish(&f.body[4..]).map_err(|e| {
                            ReplError::Auth(format!("the server's SCRAM signature did not verify: {e}"))
                        })?;
                    }
                    other => {
                        return Err(ReplError::Auth(format!(
                            "the server asks for authentication method {other}, which is not supported (use trust, password, md5 or scram-sha-256)"
                        )))
                    }
                }
            }
            b'S' => {
                let mut it = f.body.split(|&b| b == 0);
                if let (Some(k), Some(v)) = (it.next(), it.next()) {
                    conn.params.insert(
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    );
                }
            }
            b'K' | b'N' => {}
            b'E' => return Err(ReplError::Server(parse_error(&f.body))),
            b'Z' => return Ok(()),
            other => {
                return Err(ReplError::Protocol(format!(
                    "unexpected message '{}' during startup",
                    other as char
                )));
            }
        }
    }
}
