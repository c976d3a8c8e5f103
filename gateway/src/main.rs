//! `bucketgate`: the command line.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad config.

/// jemalloc, chosen by measurement (bench/README.md, "Memory after the load"): 20 s after 64
/// sessions had each moved 8 MiB, the gateway held 122 MiB with glibc's malloc (111 MiB with a
/// `malloc_trim` after the load: the pages were not free, only fragmented), and 56 MiB with
/// jemalloc, which keeps size classes apart and returns whole free pages.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its first allocation: a background thread gives freed pages
/// back to the system after 100 ms (`dirty_decay_ms`), at once instead of through a second,
/// "muzzy" stage (`muzzy_decay_ms: 0`), so memory falls back soon after a load ends. A download
/// frees its S3 connections' read buffers as fast as it moves bytes: with 1 s, those pages made
/// the gateway's peak RSS over a 1 GiB SFTP put and get 73–81 MiB, with 100 ms 62–69 MiB, for
/// 2–4% more CPU on the get (bench/README.md, "Part buffers filled again, pages given back
/// sooner"). `0` cost 45% more CPU on the put and 85% on the get.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:100,muzzy_decay_ms:0\0";

mod admin;
mod alloc;
mod api;
mod cmd;
mod console;
mod demo;
mod syncstore;
mod wiring;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// SFTP, SCP and FTP/FTPS gateway to S3-compatible object storage.
#[derive(Parser)]
#[command(name = "bucketgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ConfigArg {
    /// The YAML config file [default: ./bucketgate.yaml; env: BUCKETGATE_CONFIG]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format on stderr (overrides `log.format`)
    #[arg(long, value_name = "text|json")]
    log_format: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the servers until SIGTERM/SIGINT (graceful drain); SIGHUP reloads the config
    Serve(ConfigArg),
    /// Validate the config: exit 0, or print every error with its YAML path and line, exit 2
    Check(ConfigArg),
    /// Read a password from stdin (or a tty prompt) and print its argon2id PHC hash
    HashPassword,
    /// Remotes (S3-compatible servers)
    Remote {
        #[command(subcommand)]
        command: RemoteCommand,
    },
    /// Sync jobs (copies between a site folder and a remote)
    Sync {
        #[command(subcommand)]
        command: SyncCommand,
    },
    /// The admin API's tokens and the web console's accounts (docs/admin-api.md)
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// API tokens
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Admin accounts: people who log in to the web console
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Create an account; its password is read from stdin or a prompt, never the command line
    Create {
        /// The login name
        name: String,
        /// `ro` (sees everything, changes nothing) or `rw`
        #[arg(long, default_value = "ro")]
        scope: String,
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// List the accounts (name, scope, created)
    List {
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Delete an account; its console sessions end at once
    Delete {
        /// The login name
        name: String,
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Set an account's password (stdin or a prompt); its console sessions end
    Passwd {
        /// The login name
        name: String,
        #[command(flatten)]
        cfg: ConfigArg,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it once on stdout
    Create {
        /// `ro` (GET only) or `rw`
        #[arg(long, default_value = "ro")]
        scope: String,
        /// A label for people
        #[arg(long, default_value = "admin")]
        name: String,
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// List the tokens (never their secrets)
    List {
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Delete a token by id
    Revoke {
        /// The token's id (`bucketgate admin token list`)
        id: String,
        #[command(flatten)]
        cfg: ConfigArg,
    },
}

#[derive(Subcommand)]
enum SyncCommand {
    /// Run one sync job now, with a progress bar on a terminal and a summary at the end
    Run {
        /// The job's name in `syncs`
        name: String,
        /// Show what would be copied and deleted, change nothing
        #[arg(long)]
        dry_run: bool,
        /// Go ahead even when the run deletes more files than the job's `max_delete`
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// The last runs of every sync job (or of the named ones)
    Status {
        /// Job names (default: every job of the config)
        names: Vec<String>,
        #[command(flatten)]
        cfg: ConfigArg,
    },
}

#[derive(Subcommand)]
enum RemoteCommand {
    /// Probe a remote: connect, list, put, get, copy, delete a probe object, small multipart
    Test {
        /// The remote's name in `remotes`
        name: String,
        /// Skip every step that writes
        #[arg(long)]
        read_only: bool,
        #[command(flatten)]
        cfg: ConfigArg,
    },
}

/// A failure that carries its exit code.
#[derive(Debug)]
pub struct Exit {
    /// 1 runtime failure, 2 bad usage or config.
    pub code: u8,
    /// What to print on stderr.
    pub message: String,
}

impl Exit {
    /// Bad usage or config (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Exit {
            code: 2,
            message: message.into(),
        }
    }

    /// Runtime failure (exit 1).
    pub fn runtime(message: impl Into<String>) -> Self {
        Exit {
            code: 1,
            message: message.into(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::HashPassword => demo::hash_password_command(),
        Command::Check(c) => cmd::check::run(&c),
        Command::Serve(c) => cmd::serve::run(&c),
        Command::Remote {
            command:
                RemoteCommand::Test {
                    name,
                    read_only,
                    cfg,
                },
        } => cmd::remote::run(&cfg, &name, read_only),
        Command::Sync {
            command:
                SyncCommand::Run {
                    name,
                    dry_run,
                    force,
                    cfg,
                },
        } => cmd::sync::run(&cfg, &name, dry_run, force),
        Command::Sync {
            command: SyncCommand::Status { names, cfg },
        } => cmd::sync::status(&cfg, &names),
        Command::Admin {
            command: AdminCommand::Token { command },
        } => match command {
            TokenCommand::Create { scope, name, cfg } => cmd::admin::create(&cfg, &scope, &name),
            TokenCommand::List { cfg } => cmd::admin::list(&cfg),
            TokenCommand::Revoke { id, cfg } => cmd::admin::revoke(&cfg, &id),
        },
        Command::Admin {
            command: AdminCommand::Account { command },
        } => match command {
            AccountCommand::Create { name, scope, cfg } => {
                cmd::admin::account_create(&cfg, &name, &scope)
            }
            AccountCommand::List { cfg } => cmd::admin::account_list(&cfg),
            AccountCommand::Delete { name, cfg } => cmd::admin::account_delete(&cfg, &name),
            AccountCommand::Passwd { name, cfg } => cmd::admin::account_passwd(&cfg, &name),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("{}", e.message);
            }
            ExitCode::from(e.code)
        }
    }
}
