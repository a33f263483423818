//! The command line: `serve` and the administration a self-hoster needs
//! without a backend. Administration opens the database directly (it is
//! held exclusively, so stop the service first) and acts with the rights of
//! an API token.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::domain::Principal;
use crate::domain::api_tokens::{ApiTokenInfo, ApiTokenSource, ApiTokenStatus};
use crate::model::OrgRole;
use crate::secrets::{API_TOKEN_PREFIX, new_token, token_hash};
use crate::store::StoreError;
use crate::store::key_fingerprint::{Fingerprint, Verdict, verdict};

#[derive(Debug, Parser)]
#[command(name = "messenger-chat", version, about = "Chatrooms of a mobile messenger, on a Matrix homeserver")]
pub struct Cli {
    /// Configuration file (default: ./config.toml when present, else built-in defaults).
    #[arg(long, global = true, env = "MESSENGER_CHAT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API over HTTPS until SIGTERM.
    Serve,
    /// Write a fresh config file with a new API token, and print the token once.
    Init {
        /// Where to write the config.
        #[arg(long, default_value = "config.toml")]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Load and validate the configuration, then print it (secrets hidden).
    CheckConfig,
    /// API tokens and personal access tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Organizations and their members.
    #[command(subcommand)]
    Org(OrgCommand),
    /// App users.
    #[command(subcommand)]
    User(UserCommand),
    /// Write every record as JSON Lines (service stopped; while it runs, use GET /v1/export).
    Export {
        /// File to write; standard output when absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check the database with the service stopped: redb's own integrity check,
    /// every index against its records and back, room counts and id counters,
    /// the outbox. Prints what is wrong and exits 1 when anything is. An older
    /// database is migrated first, as at start-up.
    Check {
        /// Rebuild every index and counter from the records, in one transaction.
        #[arg(long)]
        repair: bool,
    },
    /// Restore an export into an empty database.
    Import {
        /// The export file.
        file: PathBuf,
        /// Add to a database that already holds records.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a new API token: prints the token and the entry to put in auth.api_token_hashes.
    NewApi {
        /// The name `token list-api` shows for it.
        #[arg(long, default_value = "backend")]
        name: String,
    },
    /// List the API tokens (config and first start): id, name, source, status; never a secret.
    ListApi,
    /// Revoke an API token by the id `token list-api` shows: it gets 401 from the next start.
    RevokeApi {
        /// The token's id (12 hex digits) or its full hash.
        id: String,
    },
    /// Print the SHA-256 (for auth.api_token_hashes) of a token read from standard input.
    Hash,
    /// Issue a personal access token for a user (shown once).
    Issue {
        #[arg(long)]
        user: i64,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        days: Option<i64>,
    },
    /// List a user's personal access tokens.
    List {
        #[arg(long)]
        user: i64,
    },
    /// Revoke a personal access token.
    Revoke {
        #[arg(long)]
        user: i64,
        #[arg(long)]
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create or rename an organization.
    Put {
        id: i64,
        #[arg(long)]
        name: String,
    },
    /// Delete an organization with all its rooms.
    Delete { id: i64 },
    /// List an organization's members.
    Members { id: i64 },
    /// Make a user a member with a role (owner, admin, member).
    SetMember {
        id: i64,
        user: i64,
        #[arg(long, default_value = "member")]
        role: String,
    },
    /// Remove a member; they leave every room of the organization.
    RemoveMember { id: i64, user: i64 },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create or update a user.
    Put {
        id: i64,
        #[arg(long)]
        display_name: String,
    },
    /// Deactivate a user: tokens revoked, out of every room.
    Deactivate { id: i64 },
}

/// Runs an administration subcommand; the text to print on success.
///
/// # Errors
/// A line saying what went wrong.
pub fn run_admin(config: Config, command: Command, config_path: Option<&Path>) -> Result<String, String> {
    match command {
        Command::Serve => Err("serve is not an administration command".into()),
        Command::Init { out, force } => init(&out, force),
        Command::CheckConfig => Ok(format!(
            "configuration OK ({})\n{}",
            config_path.map_or("built-in defaults and environment".to_string(), |p| p.display().to_string()),
            shown_config(&config)
        )),
        Command::Check { repair } => check(&config, repair),
        Command::Token(TokenCommand::NewApi { name }) => {
            let name = crate::domain::name("name", &name).map_err(|e| e.to_string())?;
            let token = new_token(API_TOKEN_PREFIX);
            Ok(format!(
                "token (shown once): {token}\nadd to [auth] api_token_hashes: {}",
                api_token_entry(&hex::encode(token_hash(&token)), &name)
            ))
        }
        Command::Token(TokenCommand::Hash) => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map_err(|e| e.to_string())?;
            Ok(hex::encode(token_hash(line.trim())))
        }
        Command::Export { out } => export(&config, out.as_deref()),
        Command::Import { file, force } => import(&config, &file, force),
        other => {
            let d = crate::app::open_domain(config)?;
            let p = Principal::COMMAND_LINE;
            let show = |e: crate::error::Error| e.for_cli();
            match other {
                Command::Token(TokenCommand::Issue { user, name, days }) => {
                    let t = d.issue_token(p, user, name.as_deref(), days).map_err(show)?;
                    Ok(format!("token {} for user {user} (shown once): {}", t.record.id, t.secret))
                }
                Command::Token(TokenCommand::List { user }) => {
                    let r = d.store.read().map_err(|e| e.to_string())?;
                    let tokens = d.tokens(&r, p, user).map_err(show)?;
                    Ok(tokens
                        .iter()
                        .map(|t| {
                            format!(
                                "{}\t{}\texpires {}\t{}",
                                t.id,
                                t.name,
                                t.expires_at.map_or("never".into(), crate::api::views::rfc3339),
                                if t.revoked { "revoked" } else { "active" }
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n"))
                }
                Command::Token(TokenCommand::ListApi) => {
                    let r = d.store.read().map_err(|e| e.to_string())?;
                    let tokens = d.api_tokens(&r).map_err(show)?;
                    let mut lines = vec!["id\tname\tsource\tstatus".to_string()];
                    lines.extend(tokens.iter().map(|t| format!("{}\t{}\t{}\t{}", t.id, t.name, source(t), status(t))));
                    Ok(lines.join("\n"))
                }
                Command::Token(TokenCommand::RevokeApi { id }) => {
                    let t = d.revoke_api_token(&id).map_err(show)?;
                    let mut out =
                        format!("revoked API token {} ({}): it gets 401 once the service starts again", t.id, t.name);
                    if let ApiTokenSource::Config { index } = t.source {
                        let file = config_path.map_or_else(
                            || "the configuration (MESSENGER_CHAT_AUTH__API_TOKEN_HASHES or ./config.toml)".to_string(),
                            |p| p.display().to_string(),
                        );
                        out.push_str(&format!(
                            "\nalso remove its entry from {file}: auth.api_token_hashes[{index}], the hash starting {}",
                            t.id
                        ));
                    }
                    Ok(out)
                }
                Command::Token(TokenCommand::Revoke { user, id }) => {
                    d.revoke_token(p, user, id).map_err(show)?;
                    Ok(format!("revoked token {id} of user {user}"))
                }
                Command::Org(OrgCommand::Put { id, name }) => {
                    let (org, created) = d.put_org(p, id, &name).map_err(show)?;
                    Ok(format!("{} organization {}: {}", if created { "created" } else { "renamed" }, org.id, org.name))
                }
                Command::Org(OrgCommand::Delete { id }) => {
                    d.delete_org(p, id).map_err(show)?;
                    Ok(format!("deleted organization {id} and its rooms"))
                }
                Command::Org(OrgCommand::Members { id }) => {
                    let r = d.store.read().map_err(|e| e.to_string())?;
                    let members = d.members(&r, p, id).map_err(show)?;
                    Ok(members.iter().map(|(u, role)| format!("{u}\t{}", role.as_str())).collect::<Vec<_>>().join("\n"))
                }
                Command::Org(OrgCommand::SetMember { id, user, role }) => {
                    let parsed = OrgRole::parse(&role)
                        .ok_or_else(|| format!("role must be owner, admin or member, got {role:?}"))?;
                    d.set_member(p, id, user, parsed).map_err(show)?;
                    Ok(format!("user {user} is {role} of organization {id}"))
                }
                Command::Org(OrgCommand::RemoveMember { id, user }) => {
                    d.remove_member(p, id, user).map_err(show)?;
                    Ok(format!("removed user {user} from organization {id}"))
                }
                Command::User(UserCommand::Put { id, display_name }) => {
                    let (u, created) = d.put_user(p, id, &display_name).map_err(show)?;
                    Ok(format!("{} user {}: {}", if created { "created" } else { "updated" }, u.id, u.display_name))
                }
                Command::User(UserCommand::Deactivate { id }) => {
                    d.deactivate_user(p, id).map_err(show)?;
                    Ok(format!("deactivated user {id}"))
                }
                _ => unreachable!("handled above"),
            }
        }
    }
}

/// `export`: the dump to a file or standard output. A running service holds
/// the database; then the answer is how to back up through it instead.
fn export(config: &Config, out: Option<&Path>) -> Result<String, String> {
    let store = match crate::app::open_store(config) {
        Ok(store) => store,
        Err(crate::app::OpenError::Store { source: StoreError::InUse, .. }) => return Err(backup_hint(config, out)),
        Err(e) => return Err(e.to_string()),
    };
    let bar = progress_bar("export");
    let n = match out {
        Some(path) => {
            let file = std::fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            let mut w = std::io::BufWriter::new(file);
            store.export(&mut w, bar).map_err(|e| e.to_string())?
        }
        None => {
            let mut w = std::io::BufWriter::new(std::io::stdout().lock());
            store.export(&mut w, bar).map_err(|e| e.to_string())?
        }
    };
    // The summary goes to stderr: stdout may be the dump itself.
    eprintln!("exported {n} records");
    eprintln!("{}", key_reminder(config, store.key_record().ok().and_then(|r| r.fingerprint)));
    Ok(String::new())
}

/// `import`: the records of a dump into the database. It needs no key and
/// makes none: the first start afterwards takes the key restored with the
/// dump (and refuses to start without one, the dump holding users).
fn import(config: &Config, file: &Path, force: bool) -> Result<String, String> {
    let store = crate::app::open_store(config).map_err(|e| e.to_string())?;
    let f = std::fs::File::open(file).map_err(|e| format!("cannot open {}: {e}", file.display()))?;
    let n = store.import(std::io::BufReader::new(f), force, progress_bar("import")).map_err(|e| e.to_string())?;
    let key = config.data_dir().join(crate::app::KEY_FILE);
    Ok(format!(
        "imported {n} records from {}\nput the secret.key backed up with the dump at {} before the service starts",
        file.display(),
        key.display()
    ))
}

/// What to run instead of `export` while the service runs: the exact
/// request for `GET /v1/export` on this configuration's listener, and the
/// key file to keep with it.
fn backup_hint(config: &Config, out: Option<&Path>) -> String {
    let dir = std::fs::canonicalize(config.data_dir()).unwrap_or_else(|_| config.data_dir());
    let addr = config.listen_addr();
    let host = match addr.ip() {
        ip if ip.is_unspecified() => "localhost".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let (url, ca) = if config.server.plain_http {
        (format!("http://{host}:{}/v1/export", addr.port()), String::new())
    } else if config.tls.cert_file.is_empty() {
        // The self-signed certificate names localhost and the loopback addresses.
        let cert = dir.join("tls").join("cert.pem");
        (format!("https://{host}:{}/v1/export", addr.port()), format!(" --cacert {}", shell_quote(&cert)))
    } else {
        (format!("https://<the host name in {}>:{}/v1/export", config.tls.cert_file, addr.port()), String::new())
    };
    let file = out.map_or_else(|| "backup.jsonl".to_string(), shell_quote);
    let key = shell_quote(&dir.join(crate::app::KEY_FILE));
    format!(
        "the database is held by the running service, so export cannot open it.\n\
         Back up while it serves, with an API token in API_TOKEN:\n\
         \n  curl -fsS{ca} -H \"Authorization: Bearer $API_TOKEN\" -o {file} {url}\n  cp {key} backup-secret.key\n\n\
         Keep the key file with the dump: without it every Matrix password changes and the webhook secrets cannot \
         be read. \
         (Or stop the service and run export again.)"
    )
}

/// What `export` says about the key: the dump needs it.
fn key_reminder(config: &Config, fingerprint: Option<Fingerprint>) -> String {
    let dir = std::fs::canonicalize(config.data_dir()).unwrap_or_else(|_| config.data_dir());
    let key = shell_quote(&dir.join(crate::app::KEY_FILE));
    let print = fingerprint.map(|f| format!(" (fingerprint {f})")).unwrap_or_default();
    format!(
        "back up the server key {key}{print} with this export, e.g. `cp {key} backup-secret.key`: \
         the users' Matrix passwords come from it and the webhook secrets are sealed with it, so a \
         restore needs both (put the key back before the import or the start)"
    )
}

/// `path` as one word for a POSIX shell.
fn shell_quote(path: &Path) -> String {
    let s = path.display().to_string();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@".contains(&b)) {
        s
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// `check` and `check --repair`: the report goes to standard output; the
/// result line says whether anything is (still) wrong.
fn check(config: &Config, repair: bool) -> Result<String, String> {
    let path = config.data_dir().join(crate::app::DB_FILE);
    let cache = usize::try_from(config.storage.cache_mib.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX);
    let fail = |e: crate::store::StoreError| format!("{}: {e}", path.display());
    let key_file = config.data_dir().join(crate::app::KEY_FILE);
    // Without --repair nothing reaches the file: redb's writes stay in memory.
    let (store, opened, integrity) = crate::store::Store::open_checked(&path, cache, !repair).map_err(fail)?;
    let report = store.check(integrity, opened.clone()).map_err(fail)?;
    let key = key_verdict(&store, &key_file);
    let key_line = match &key {
        Ok(v) => v.report(&key_file),
        Err(e) => format!("problem: server key: {e}"),
    };
    println!("database {}\n{report}\n{key_line}", path.display());
    if !repair {
        println!("nothing was written to the file (redb's own check ran with its writes kept in memory)");
    }
    let key_problem = match key {
        Ok(v) => v.refusal(&path, &key_file),
        Err(e) => Some(e),
    };
    if report.is_clean() {
        return key_problem.map_or(Ok(String::new()), Err);
    }
    if !repair {
        return Err(format!("{}: {} problems found", path.display(), report.problems.len()));
    }
    let after = store.repair(integrity, opened).map_err(fail)?;
    println!("\nafter repair (one transaction, committed):\n{after}");
    if after.is_clean() {
        key_problem.map_or_else(|| Ok(format!("repaired {}", path.display())), Err)
    } else {
        Err(format!(
            "{}: {} problems remain that a rebuild cannot fix; decide the conflicts, restore unreadable records from a backup",
            path.display(),
            after.problems.len()
        ))
    }
}

/// How the key file stands to the database: the verdict, or why the key
/// file cannot be used at all.
fn key_verdict(store: &crate::store::Store, key_file: &Path) -> Result<Verdict, String> {
    let key = crate::secrets::ServerKey::load(key_file)?;
    let record = store.key_record().map_err(|e| e.to_string())?;
    Ok(verdict(&record, key.as_ref()))
}

/// The shipped, documented config file.
const TEMPLATE: &str = include_str!("../config.toml");

fn init(out: &Path, force: bool) -> Result<String, String> {
    if out.exists() && !force {
        return Err(format!("{} exists; pass --force to replace it", out.display()));
    }
    let token = new_token(API_TOKEN_PREFIX);
    let hash = hex::encode(token_hash(&token));
    let entry = api_token_entry(&hash, "init");
    let text = TEMPLATE.replacen("api_token_hashes = []", &format!("api_token_hashes = [{entry}]"), 1);
    if text == TEMPLATE {
        return Err("the config template has no api_token_hashes line".into());
    }
    let _ = std::fs::remove_file(out);
    crate::secrets::write_private_file(out, text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    Ok(format!("wrote {}\nAPI token (shown once, keep it now): {token}", out.display()))
}

/// An `auth.api_token_hashes` entry in TOML (names are checked printable by the caller).
fn api_token_entry(hash: &str, name: &str) -> String {
    let quoted = serde_json::to_string(name).unwrap_or_else(|_| "\"\"".into());
    format!("{{ hash = \"{hash}\", name = {quoted} }}")
}

fn source(t: &ApiTokenInfo) -> String {
    match t.source {
        ApiTokenSource::Config { index } => format!("config auth.api_token_hashes[{index}]"),
        ApiTokenSource::Database => "database".to_string(),
    }
}

fn status(t: &ApiTokenInfo) -> &'static str {
    match t.status {
        ApiTokenStatus::Active => "active",
        ApiTokenStatus::Revoked => "revoked",
        ApiTokenStatus::NotListed => "not accepted: auth.api_token_hashes does not list it",
    }
}

/// A progress line on a terminal (stderr), nothing elsewhere.
fn progress_bar(what: &'static str) -> impl FnMut(u64, u64) {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    move |done, total| {
        if tty && total > 0 {
            let width = 30u64;
            let filled = (done.min(total) * width / total) as usize;
            eprint!("\r{what}: [{}{}] {done}/{total} records", "#".repeat(filled), " ".repeat(30 - filled));
            if done >= total {
                eprintln!();
            }
        }
    }
}

/// The effective configuration as JSON, with the inline shared secret hidden.
fn shown_config(config: &Config) -> String {
    let mut shown = config.clone();
    if !shown.matrix.registration_shared_secret.is_empty() {
        shown.matrix.registration_shared_secret = "(hidden)".into();
    }
    serde_json::to_string_pretty(&shown).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(edit: impl FnOnce(&mut Config)) -> String {
        let mut config = Config::default();
        config.storage.data_dir = "/srv/mc data".into();
        edit(&mut config);
        backup_hint(&config, None)
    }

    #[test]
    fn the_backup_hint_fits_the_listener() {
        let h = hint(|_| {});
        assert!(h.contains("--cacert '/srv/mc data/tls/cert.pem'"), "{h}");
        assert!(h.contains("-o backup.jsonl https://localhost:8443/v1/export"), "{h}");
        assert!(h.contains("cp '/srv/mc data/secret.key' backup-secret.key"), "{h}");
        let h = hint(|c| {
            c.server.listen = "127.0.0.1:9000".into();
            c.server.plain_http = true;
        });
        assert!(h.contains("http://127.0.0.1:9000/v1/export") && !h.contains("--cacert"), "{h}");
        let h = hint(|c| {
            c.server.listen = "[::1]:443".into();
            c.tls.cert_file = "/etc/ssl/chat.pem".into();
            c.tls.key_file = "/etc/ssl/chat.key".into();
        });
        assert!(h.contains("https://<the host name in /etc/ssl/chat.pem>:443/v1/export"), "{h}");
        assert!(!h.contains("--cacert"), "{h}");
    }

    #[test]
    fn paths_are_quoted_for_the_shell() {
        assert_eq!(shell_quote(Path::new("/var/lib/messenger-chat/secret.key")), "/var/lib/messenger-chat/secret.key");
        assert_eq!(shell_quote(Path::new("it's here")), "'it'\\''s here'");
        assert_eq!(shell_quote(Path::new("$HOME")), "'$HOME'");
    }
}
