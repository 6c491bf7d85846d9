//! The `graphsync` executable: command-line parsing and the I/O edge around the library crates.

mod admin;
mod decode;
mod demo;
mod explorer;
mod follow;
mod http;
mod log_cmd;
mod notify;
mod replicate;
mod roles;
mod serve;
mod snapshot_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// graphsync keeps a live, queryable graph replica of a PostgreSQL database.
#[derive(Parser, Debug)]
#[command(name = "graphsync", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr (`RUST_LOG` sets the levels).
    #[arg(long, global = true, env = "GRAPHSYNC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Decode captured pgoutput messages (lines of `LSN|HEX`) into JSON lines on stdout.
    ///
    /// Capture with:
    /// psql -At -c "SELECT lsn, encode(data,'hex') FROM pg_logical_slot_peek_binary_changes('slot', NULL, NULL, 'proto_version', '1', 'publication_names', 'pub')"
    Decode {
        /// Files to decode, in stream order ("-" for stdin).
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
    /// Replicate the mapped tables into the graph until SIGTERM/SIGINT.
    ///
    /// Example: graphsync replicate --config graph.toml --database-url postgres://graphsync@db/app --data-dir /var/lib/graphsync
    Replicate(Box<replicate::ReplicateArgs>),
    /// Serve a read replica fed by a leader's NATS JetStream stream (`replicate --publish`)
    /// instead of a replication slot: bootstraps from the leader's newest snapshot, then
    /// applies its change log.
    ///
    /// Example: graphsync follow --config graph.toml --nats nats://nats:4222 --data-dir /var/lib/graphsync-follower
    Follow(Box<follow::FollowArgs>),
    /// Try graphsync in one command: a throw-away PostgreSQL with a sample multi-tenant social
    /// graph and a live writer, replicated, with the HTTP API and example queries. Ctrl-C stops
    /// it and removes everything it made.
    Demo(demo::DemoArgs),
    /// Print a mapping config drafted from the database's catalog, or with --diff what changed in
    /// the catalog since a mapping was written.
    ///
    /// Example: graphsync init --discover --database-url postgres://graphsync@db/app > graph.toml
    /// Example: graphsync init --discover --diff graph.toml
    Init(admin::InitArgs),
    /// Make the running `graphsync replicate` re-read its mapping file (as SIGHUP does) and
    /// print what became of it: compatible changes apply online, others are refused with why.
    ///
    /// Example: graphsync reload --listen 127.0.0.1:9187
    Reload(admin::ReloadArgs),
    /// Drop the replication slot, and the publication if graphsync created it.
    ///
    /// Example: graphsync teardown --config graph.toml
    Teardown(admin::TeardownArgs),
    /// Inspect graph snapshot files.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Inspect the change log of a data directory (read only).
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
}

#[derive(Subcommand, Debug)]
enum LogCommand {
    /// The change log's segments (start, size, records, first and last LSN) and the snapshots
    /// it is replayed on, as JSON.
    Info(LogTarget),
    /// Check every record; exit 0 if sound, 1 naming the first damaged one.
    Verify(LogTarget),
}

#[derive(clap::Args, Debug)]
struct LogTarget {
    /// The data directory of `graphsync replicate`.
    #[arg(long, env = "GRAPHSYNC_DATA_DIR")]
    data_dir: std::path::PathBuf,
}

#[derive(Subcommand, Debug)]
enum SnapshotCommand {
    /// Validate a snapshot completely and print its metadata as JSON.
    Info(SnapshotTarget),
    /// Validate a snapshot completely; exit 0 if it is sound, 1 (with the reason) if not.
    Verify(SnapshotTarget),
}

/// Which snapshot: a file, or the current checkpoint's in a data directory.
#[derive(clap::Args, Debug)]
struct SnapshotTarget {
    /// The snapshot file.
    #[arg(required_unless_present = "data_dir")]
    file: Option<std::path::PathBuf>,
    /// The data directory of `graphsync replicate`: its current checkpoint's snapshot.
    #[arg(long, env = "GRAPHSYNC_DATA_DIR", conflicts_with = "file")]
    data_dir: Option<std::path::PathBuf>,
}

impl SnapshotTarget {
    fn path(&self) -> anyhow::Result<std::path::PathBuf> {
        if let Some(f) = &self.file {
            return Ok(f.clone());
        }
        let dir = sync::generation::state_dir(&self.data_dir.clone().unwrap_or_default());
        if !dir.is_dir() {
            anyhow::bail!(
                "{} is not a directory (pass the --data-dir graphsync replicate uses)",
                dir.display()
            );
        }
        let store = sync::checkpoint::CheckpointStore::open(&dir)?;
        let m = store.manifest().ok_or_else(|| {
            anyhow::anyhow!(
                "{} holds no readable checkpoint.json (not a graphsync data directory, or no checkpoint yet)",
                dir.display()
            )
        })?;
        Ok(dir.join(m.snapshot))
    }
}

fn main() -> ExitCode {
    one_malloc_arena();
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Replicate(_) | Command::Follow(_)) {
        "info"
    } else if matches!(cli.command, Command::Demo(_)) {
        "warn,sync=info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_level.into());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == LogFormat::Json {
        fmt.json().init();
    } else {
        fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let result = match cli.command {
        Command::Replicate(args) => replicate::run(*args),
        Command::Follow(args) => follow::run(*args),
        Command::Init(args) => admin::init(args),
        Command::Demo(args) => demo::run(args),
        Command::Teardown(args) => admin::teardown(args),
        Command::Reload(args) => admin::reload(args),
        Command::Decode { files } => decode::run(&files),
        Command::Snapshot {
            command: SnapshotCommand::Info(t),
        } => t.path().and_then(|f| snapshot_cmd::info(&f)),
        Command::Snapshot {
            command: SnapshotCommand::Verify(t),
        } => t.path().and_then(|f| snapshot_cmd::verify(&f)),
        Command::Log {
            command: LogCommand::Info(t),
        } => log_cmd::info(&sync::generation::state_dir(&t.data_dir)),
        Command::Log {
            command: LogCommand::Verify(t),
        } => log_cmd::verify(&sync::generation::state_dir(&t.data_dir)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Each cause once: many errors already quote their source in their message.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
    }
}

/// One glibc malloc arena for the whole process (unless `MALLOC_ARENA_MAX` says otherwise).
/// Memory moves between threads (the replicator's, compaction's, the thread freeing retired
/// views, the HTTP workers), and with glibc's default of one arena per thread what one thread
/// freed was not reused by another: when the replicator was a task hopping between runtime
/// workers, applying a 2 GB spilled transaction peaked at 107 MB instead of about 60 MB
/// (`faults::large_streamed_transaction_in_bounded_memory` asserts the bound). CPU per change
/// measured the same either way.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called first thing in `main`, before any other thread exists or anything
        // was allocated through another arena; `mallopt` only sets an allocator parameter.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
