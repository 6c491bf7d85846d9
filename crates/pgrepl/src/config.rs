//! Connection settings: libpq-style URLs (`postgres://user:pw@host:port/db?sslmode=require`),
//! `key=value` strings, and the `PG*` environment variables as defaults.

use crate::ReplError;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A password. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(s: impl Into<String>) -> Self {
        Password(s.into())
    }

    /// The secret itself, for authentication only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS when the server offers it (no certificate check), else plain.
    #[default]
    Prefer,
    /// Require TLS; check the certificate chain only if `sslrootcert` is given.
    Require,
    /// Require TLS and a certificate chained to `sslrootcert`.
    VerifyCa,
    /// Require TLS, a certificate chained to `sslrootcert`, and a matching host name.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self, ReplError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(ReplError::Config(format!(
                    "unknown sslmode {other:?}: use disable, prefer, require, verify-ca or verify-full"
                )))
            }
        })
    }

    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address.
    Tcp(String),
    /// A directory holding the server's Unix socket (`.s.PGSQL.<port>`).
    Unix(PathBuf),
}

/// Everything needed to open a connection. `Debug` hides the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Server host or socket directory.
    pub host: Host,
    /// Server port.
    pub port: u16,
    /// Role to log in as.
    pub user: String,
    /// Password, if the server asks for one.
    pub password: Option<Password>,
    /// Database (logical replication is per database).
    pub dbname: String,
    /// `application_name`, shown in `pg_stat_replication`.
    pub application_name: Option<String>,
    /// TLS policy.
    pub ssl_mode: SslMode,
    /// PEM file of trusted root certificates.
    pub ssl_root_cert: Option<PathBuf>,
    /// Server options sent at startup (`-c name=value ...`).
    pub options: Option<String>,
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
}

impl Config {
    /// Parses a URL or `key=value` connection string, taking unset fields from the `PG*`
    /// environment variables and then libpq's defaults.
    pub fn parse(s: &str) -> Result<Config, ReplError> {
        Self::parse_with_env(s, |k| std::env::var(k).ok())
    }

    /// As [`Config::parse`], reading variables through `env` (for tests).
    pub fn parse_with_env(s: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ReplError> {
        let s = s.trim();
        let pairs = if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            parse_url(s)?
        } else {
            parse_key_values(s)?
        };
        let mut b = Builder::default();
        for (k, v) in [
            ("host", "PGHOST"),
            ("port", "PGPORT"),
            ("user", "PGUSER"),
            ("password", "PGPASSWORD"),
            ("dbname", "PGDATABASE"),
            ("sslmode", "PGSSLMODE"),
            ("sslrootcert", "PGSSLROOTCERT"),
            ("application_name", "PGAPPNAME"),
            ("connect_timeout", "PGCONNECT_TIMEOUT"),
            ("options", "PGOPTIONS"),
        ] {
            if let Some(val) = env(v) {
                b.set(k, val)?;
            }
        }
        for (k, v) in pairs {
            b.set(&k, v)?;
        }
        b.finish(&env)
    }

    /// `host:port` or the socket path, for messages. Never includes the password.
    pub fn target(&self) -> String {
        match &self.host {
            Host::Tcp(h) if h.contains(':') => format!("[{h}]:{}", self.port),
            Host::Tcp(h) => format!("{h}:{}", self.port),
            Host::Unix(dir) => format!("{}/.s.PGSQL.{}", dir.display(), self.port),
        }
    }
}

impl fmt::Display for Config {
    /// A `key=value` form without the password, safe to log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match &self.host {
            Host::Tcp(h) => h.clone(),
            Host::Unix(p) => p.display().to_string(),
        };
        write!(
            f,
            "host={host} port={} user={} dbname={} sslmode={}",
            self.port, self.user, self.dbname, self.ssl_mode
        )
    }
}

#[derive(Default)]
struct Builder {
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    password: Option<String>,
    dbname: Option<String>,
    sslmode: Option<SslMode>,
    sslrootcert: Option<String>,
    application_name: Option<String>,
    connect_timeout: Option<u64>,
    options: Option<String>,
}

impl Builder {
    fn set(&mut self, key: &str, v: String) -> Result<(), ReplError> {
        match key {
            "host" | "hostaddr" => self.host = Some(v),
            "port" => {
                let p = v.parse::<u16>().ok().filter(|p| *p != 0);
                self.port = Some(p.ok_or_else(|| ReplError::Config(format!("invalid port {v:?}")))?);
            }
            "user" => self.user = Some(v),
            "password" => self.password = Some(v),
            "dbname" => self.dbname = Some(v),
            "sslmode" => self.sslmode = Some(SslMode::parse(&v)?),
            "sslrootcert" => self.sslrootcert = Some(v),
            "application_name" => self.application_name = Some(v),
            "options" => self.options = Some(v),
            "connect_timeout" => {
                let t = v
                    .parse::<u64>()
                    .map_err(|_| ReplError::Config(format!("invalid connect_timeout {v:?}")))?;
                self.connect_timeout = Some(t);
            }
            // Parameters that matter to libpq but not to us are accepted and ignored, so a
            // connection string that works with psql works here.
            "replication"
            | "client_encoding"
            | "target_session_attrs"
            | "keepalives"
            | "keepalives_idle"
            | "sslcert"
            | "sslkey"
            | "sslcompression"
            | "gssencmode"
            | "channel_binding" => {}
            other => return Err(ReplError::Config(format!("unknown connection parameter {other:?}"))),
        }
        Ok(())
    }

    fn finish(self, env: &impl Fn(&str) -> Option<String>) -> Result<Config, ReplError> {
        let host = match self.host.filter(|h| !h.is_empty()) {
            Some(h) if h.starts_with('/') => Host::Unix(PathBuf::from(h)),
            Some(h) => Host::Tcp(h),
            None if std::path::Path::new("/var/run/postgresql").is_dir() => Host::Unix("/var/run/postgresql".into()),
            None => Host::Tcp("localhost".into()),
        };
        let user = match self.user {
            Some(u) => u,
            None => env("USER").ok_or_else(|| ReplError::Config("no user given: set user= or PGUSER".into()))?,
        };
        Ok(Config {
            host,
            port: self.port.unwrap_or(5432),
            dbname: self.dbname.unwrap_or_else(|| user.clone()),
            user,
            password: self.password.map(Password),
            application_name: self.application_name,
            ssl_mode: self.sslmode.unwrap_or_default(),
            ssl_root_cert: self.sslrootcert.map(PathBuf::from),
            options: self.options,
            connect_timeout: Duration::from_secs(self.connect_timeout.unwrap_or(10).max(1)),
        })
    }
}

fn pct(s: &str) -> Result<String, ReplError> {
    urlencoding::decode(s)
        .map(|c| c.into_owned())
        .map_err(|_| ReplError::Config("connection URL has invalid percent-encoding".into()))
}

fn parse_url(s: &str) -> Result<Vec<(String, String)>, ReplError> {
    let rest = s.split_once("://").map(|x| x.1).unwrap_or_default();
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = main.split_once('/').unwrap_or((main, ""));
    let mut out = Vec::new();
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hp)) => {
            match userinfo.split_once(':') {
                Some((u, p)) => {
                    out.push(("user".into(), pct(u)?));
                    out.push(("password".into(), pct(p)?));
                }
                None => out.push(("user".into(), pct(userinfo)?)),
            }
            hp
        }
        None => authority,
    };
    // First host only; [v6]:port, host:port or host.
    let hostport = hostport.split(',').next().unwrap_or_default();
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        let (h, after) = h
            .split_once(']')
            .ok_or_else(|| ReplError::Config("connection URL has an unclosed '[' in its host".into()))?;
        (h.to_string(), after.strip_prefix(':').map(str::to_string))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.to_string())),
            None => (hostport.to_string(), None),
        }
    };
    if !host.is_empty() {
        out.push(("host".into(), pct(&host)?));
    }
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        out.push(("port".into(), p));
    }
    if !path.is_empty() {
        out.push(("dbname".into(), pct(path)?));
    }
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        out.push((pct(k)?, pct(v)?));
    }
    Ok(out)
}

fn parse_key_values(s: &str) -> Result<Vec<(String, String)>, ReplError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(ReplError::Config(format!(
                "expected '=' after {key:?} in connection string"
            )));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut val = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => {
                        return Err(ReplError::Config(format!("unterminated quoted value for {key:?}")));
                    }
                    Some('\\') => val.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => val.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    val.extend(chars.next());
                } else {
                    val.push(c);
                }
            }
        }
        out.push((key, val));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn url() {
        let c = Config::parse_with_env(
            "postgres://app%40x:s3cr%2Ft@db.example:6543/my%20db?sslmode=require&application_name=gs",
            no_env,
        )
        .unwrap();
        assert_eq!(c.host, Host::Tcp("db.example".into()));
        assert_eq!(c.port, 6543);
        assert_eq!(c.user, "app@x");
        assert_eq!(c.password.as_ref().unwrap().expose(), "s3cr/t");
        assert_eq!(c.dbname, "my db");
        assert_eq!(c.ssl_mode, SslMode::Require);
        assert_eq!(c.application_name.as_deref(), Some("gs"));
        assert!(!format!("{c:?}").contains("s3cr"));
        assert!(!c.to_string().contains("s3cr"));
        let c = Config::parse_with_env("postgresql://[::1]:5433/x?user=u", no_env).unwrap();
        assert_eq!(c.host, Host::Tcp("::1".into()));
        assert_eq!(c.target(), "[::1]:5433");
    }

    #[test]
    fn key_values_and_env() {
        let env = |k: &str| match k {
            "PGPORT" => Some("7000".to_string()),
            "PGUSER" => Some("envuser".to_string()),
            "PGPASSWORD" => Some("envpw".to_string()),
            _ => None,
        };
        let c = Config::parse_with_env("host=/tmp/sock dbname='my \\'db' password = 'a b'", env).unwrap();
        assert_eq!(c.host, Host::Unix("/tmp/sock".into()));
        assert_eq!(c.port, 7000);
        assert_eq!(c.user, "envuser");
        assert_eq!(c.dbname, "my 'db");
        assert_eq!(c.password.unwrap().expose(), "a b");
        assert!(Config::parse_with_env("host=x sslmode=bogus user=u", no_env).is_err());
        assert!(Config::parse_with_env("host", no_env).is_err());
        assert!(Config::parse_with_env("port=99999 user=u", no_env).is_err());
    }
}
