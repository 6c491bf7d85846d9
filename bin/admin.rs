//! `graphsync init --discover [--diff graph.toml]`, `graphsync teardown` and `graphsync reload`.

use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `graphsync init`.
#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Draft the mapping from the catalog: tables with a primary key become nodes, foreign keys
    /// edges, tables whose primary key is two foreign keys edge tables.
    #[arg(long, env = "GRAPHSYNC_DISCOVER")]
    pub discover: bool,
    /// Connection string (URL or key=value; default: PG* variables).
    #[arg(long, env = "GRAPHSYNC_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Only this schema (default: every non-system schema).
    #[arg(long, env = "GRAPHSYNC_SCHEMA")]
    pub schema: Option<String>,
    /// Instead of a draft, compare this mapping with the catalog: what no longer exists, what
    /// was renamed, what is not mapped yet, as a proposed change (exit 1 when something differs).
    #[arg(long, env = "GRAPHSYNC_DIFF", requires = "discover")]
    pub diff: Option<PathBuf>,
}

/// Arguments of `graphsync teardown`.
#[derive(clap::Args, Debug)]
pub struct TeardownArgs {
    /// The mapping (for the connection, slot and publication names).
    #[arg(long, env = "GRAPHSYNC_CONFIG")]
    pub config: PathBuf,
    /// Slot to drop (default: the config's source.slot).
    #[arg(long, env = "GRAPHSYNC_SLOT")]
    pub slot: Option<String>,
    /// Publication to drop if graphsync created it (default: the config's).
    #[arg(long, env = "GRAPHSYNC_PUBLICATION")]
    pub publication: Option<String>,
    /// Connection string (default: the config's source.database_url, then PG* variables).
    #[arg(long, env = "GRAPHSYNC_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    if !args.discover {
        anyhow::bail!("graphsync init needs --discover (drafting a mapping from the catalog is the only mode)");
    }
    let mapping = args
        .diff
        .as_deref()
        .map(sync::config::MappingConfig::load)
        .transpose()?;
    let url = args
        .database_url
        .clone()
        .or_else(|| mapping.as_ref().and_then(|m| m.source.database_url.clone()))
        .unwrap_or_default();
    let conn = pgrepl::Config::parse(&url).context("invalid database URL")?;
    if let Some(mapping) = mapping {
        let (text, differs) = runtime()?.block_on(async {
            let mut client = pgrepl::ReplicationClient::connect_sql(&conn).await?;
            let d = sync::discover_diff::diff(&mut client, &mapping, args.schema.as_deref()).await?;
            client.close().await;
            anyhow::Ok(d)
        })?;
        print!("{text}");
        return Ok(if differs { ExitCode::from(1) } else { ExitCode::SUCCESS });
    }
    let text = runtime()?.block_on(async {
        let mut client = pgrepl::ReplicationClient::connect_sql(&conn).await?;
        let text = sync::discover::discover(&mut client, args.schema.as_deref()).await?;
        client.close().await;
        anyhow::Ok(text)
    })?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

pub fn teardown(args: TeardownArgs) -> anyhow::Result<ExitCode> {
    let config = sync::config::MappingConfig::load(&args.config)?;
    let url = args
        .database_url
        .or_else(|| config.source.database_url.clone())
        .unwrap_or_default();
    let conn = pgrepl::Config::parse(&url).context("invalid database URL")?;
    let slot = args.slot.unwrap_or_else(|| config.source.slot.clone());
    let publication = args.publication.unwrap_or_else(|| config.source.publication.clone());
    let done = runtime()?.block_on(async {
        let mut client = pgrepl::ReplicationClient::connect_sql(&conn).await?;
        let done = sync::catalog::teardown(&mut client, &slot, &publication).await?;
        client.close().await;
        anyhow::Ok(done)
    })?;
    if done.is_empty() {
        println!("nothing to drop: no slot {slot:?}, no publication {publication:?}");
    }
    for d in done {
        println!("{d}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `graphsync reload`.
#[derive(clap::Args, Debug)]
pub struct ReloadArgs {
    /// Address of the running `graphsync replicate`'s HTTP API.
    #[arg(long, env = "GRAPHSYNC_LISTEN", default_value = "127.0.0.1:9187")]
    pub listen: std::net::SocketAddr,
    /// Its operator API token, if it has one.
    #[arg(long, env = "GRAPHSYNC_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Rebuild the graph in the background with the mapping (new slot, copy, catch up, swap)
    /// even if the change could apply online; the graph in force serves meanwhile.
    #[arg(long)]
    pub rebuild: bool,
}

/// `graphsync reload`: asks the running replicator to re-read its mapping file (as SIGHUP
/// does) and prints the outcome; exit 0 when applied or unchanged, 1 when refused.
pub fn reload(args: ReloadArgs) -> anyhow::Result<ExitCode> {
    use std::io::{Read, Write};
    let addr = args.listen;
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
        .with_context(|| format!("cannot reach graphsync at {addr} (is it running? pass --listen)"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(90)))?;
    let auth = args
        .api_token
        .as_deref()
        .map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "POST /v1/admin/{} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n",
        if args.rebuild { "rebuild" } else { "reload" }
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).context("reading the answer")?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    let message = json["message"]
        .as_str()
        .or(json["error"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| json.to_string());
    match code {
        200 => {
            println!("{message}");
            Ok(ExitCode::SUCCESS)
        }
        401 | 403 => {
            anyhow::bail!("graphsync at {addr} refused the token: {message} (pass --api-token or GRAPHSYNC_API_TOKEN)")
        }
        _ => {
            eprintln!("{message}");
            Ok(ExitCode::from(1))
        }
    }
}

/// The body of a chunked HTTP/1.1 response.
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
