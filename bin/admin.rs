//! `graphsync init --discover` and `graphsync teardown`.

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
    let conn = pgrepl::Config::parse(args.database_url.as_deref().unwrap_or("")).context("invalid database URL")?;
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
