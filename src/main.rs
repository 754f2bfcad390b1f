//! The `switchboard` command line: arguments → load → run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use switchboard::controller::CallerAuth;
use switchboard::engine::StartError;
use switchboard::metadata::{Loader, Metadata, Problem, model::Request, schema};
use switchboard::offload::{ScanHook, Scanner};
use switchboard::server::{self, ServeError, ServerConfig};

/// Switchboard: durable, rate-limited callouts from a CRM to REST, SOAP and S3 services,
/// declared in YAML connection metadata.
#[derive(Parser)]
#[command(name = "switchboard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a metadata folder (or file) and print every problem.
    ///
    /// Exits 0 when the metadata is valid, 1 when it has problems, 2 when the arguments
    /// cannot be used.
    Validate {
        /// Folder (or file) to check.
        #[arg(default_value = "metadata")]
        dir: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Also read every secret reference (environment variables, files) and report the
        /// ones that cannot be read. Values are never printed.
        #[arg(long)]
        check_secrets: bool,
    },
    /// List every function with its inputs.
    Functions {
        /// Metadata folder (or file).
        #[arg(default_value = "metadata")]
        dir: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Print the JSON Schema of the metadata format, for editors.
    Schema,
    /// Run the engine: the HTTP API, the durable queue and the dispatcher.
    Serve(ServeArgs),
    /// Enqueue one callout on a running server and print it.
    Call(CallArgs),
    /// Run the engine against built-in demo services and summarise what happened.
    ///
    /// Starts demo services and the engine on loopback (with a temporary database and the
    /// metadata of metadata/demo), enqueues callouts over the HTTP API, waits for every one to
    /// end and prints a summary. Exits 0 when every callout ended and the calls in flight never
    /// exceeded the cap, 1 when not, 2 when the demo could not run, 130 on Ctrl-C.
    Demo(DemoArgs),
    /// Generate connection metadata from a service's description.
    #[command(subcommand)]
    Import(ImportCommand),
}

#[derive(Subcommand)]
enum ImportCommand {
    /// Write a SOAP connection (NAME.yaml) from a WSDL 1.1 file with inline XSD types.
    ///
    /// One function per operation of the first service port bound to SOAP 1.1 or 1.2: its
    /// action, a body template rendering every input field, an input schema from the XSD
    /// types, and an output mapping with its schema. Document/literal (wrapped and bare) and
    /// RPC/literal styles. FILE is a local file: save a service's WSDL first, like
    /// `curl -o crm.wsdl 'https://erp.example.com/CrmService?wsdl'`. External imports
    /// (wsdl:import, xs:import with a schemaLocation, xs:include) are not supported yet.
    ///
    /// Exits 0 when the file was written, 1 when the WSDL cannot be imported, 2 when the
    /// arguments or files cannot be used.
    Wsdl(ImportWsdlArgs),
}

#[derive(clap::Args)]
struct ImportWsdlArgs {
    /// The WSDL 1.1 file (a path, not a URL).
    file: PathBuf,
    /// Name of the connection to write; the file is NAME.yaml.
    #[arg(long, value_name = "NAME")]
    connection: String,
    /// Folder to write NAME.yaml into.
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
    /// Overwrite NAME.yaml if it exists.
    #[arg(long)]
    force: bool,
    /// Write `allow_private_network: true`, for a service on loopback or a private network
    /// (otherwise such addresses are refused at call time).
    #[arg(long)]
    allow_private_network: bool,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Callouts to enqueue.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    callouts: u32,
    /// The engine's cap on calls in flight at once.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    max_concurrent_callouts: u32,
    /// Address of the engine's API; loopback only.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// How long every callout has to end, like `120s` or `5m`; the demo fails after that.
    #[arg(long, default_value = "120s", value_parser = demo_timeout)]
    timeout: std::time::Duration,
    /// After the summary, keep the engine and the demo services running until Ctrl-C, and
    /// print how to call them.
    #[arg(long)]
    keep_running: bool,
}

/// A duration in the metadata's format, above zero and at most an hour.
fn demo_timeout(text: &str) -> Result<std::time::Duration, String> {
    let duration = switchboard::metadata::values::HumanDuration::parse(text)?.0;
    if duration.is_zero() || duration > std::time::Duration::from_secs(3600) {
        return Err(format!(
            "{text:?} is out of range; expected a duration from 1ms to 1h"
        ));
    }
    Ok(duration)
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Metadata folder.
    #[arg(long, default_value = "metadata")]
    metadata: PathBuf,
    /// Database URL; the SQLite file is created if missing.
    #[arg(long, default_value = "sqlite://switchboard.db")]
    db: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Calls in flight at once, over all connections.
    #[arg(long, default_value_t = 25)]
    max_concurrent_callouts: usize,
    /// File with one caller key per line (besides SWITCHBOARD_API_KEYS, comma-separated).
    /// Re-read on SIGHUP: a key removed from the file is refused from then on (if the file
    /// cannot be read then, or holds no key, the keys in use are kept).
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// Turn caller authentication off (development only).
    #[arg(long)]
    dev: bool,
    /// Largest request body, in bytes (not for uploads to `POST /v1/files`, which the files
    /// bucket's `max_size` bounds).
    #[arg(long, default_value_t = switchboard::controller::DEFAULT_BODY_LIMIT)]
    max_body_bytes: usize,
    /// Longest a client may take to send a request's line and headers, like `10s`, counted
    /// from the connection's accept and from each answer on a kept-alive connection: a slower
    /// client, or a connection idle that long, is disconnected.
    #[arg(long, default_value = "10s", value_parser = header_timeout)]
    header_timeout: std::time::Duration,
    /// Longest a request body may pause, like `30s`: a client that stops sending its body for
    /// that long is answered 408 and disconnected (the server's own pauses, like an upload
    /// waiting on storage, do not count).
    #[arg(long, default_value = "30s", value_parser = body_timeout)]
    body_timeout: std::time::Duration,
    /// Connections open at once; more wait in the listen backlog until one closes. At start
    /// the soft limit of open files is raised to the hard limit; connections are capped 512
    /// below it (files kept for the database, calls and uploads).
    #[arg(long, default_value_t = switchboard::controller::DEFAULT_MAX_CONNECTIONS as u32, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: u32,
    /// Uploads to `POST /v1/files` at once (each holds up to three parts of the files
    /// bucket's `part_size` in memory); more are answered 503 with `Retry-After`.
    #[arg(long, default_value_t = switchboard::controller::DEFAULT_MAX_CONCURRENT_UPLOADS as u32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    max_concurrent_uploads: u32,
    /// Scan every upload with this program before its reference is handed out: the program
    /// and its arguments, split at whitespace (no quoting, no shell), like
    /// "clamdscan --no-summary -". The file comes on its standard input; exit status 0 is
    /// clean, 1 infected, anything else a failed scan.
    #[arg(
        long,
        value_name = "PROGRAM ARGS",
        value_parser = scan_command,
        conflicts_with = "scan_clamd"
    )]
    scan_command: Option<String>,
    /// Scan every upload with a ClamAV daemon (clamd, by INSTREAM): its Unix socket path
    /// (starting with `/`) or HOST:PORT.
    #[arg(long, value_name = "SOCKET|HOST:PORT", value_parser = scan_clamd)]
    scan_clamd: Option<String>,
    /// How long a scan may take once the last byte was handed to the scanner (and longest a
    /// scanner may stop reading), like `60s`.
    #[arg(long, default_value = "60s", value_parser = scan_timeout)]
    scan_timeout: std::time::Duration,
    /// How often expired file references are looked for (their objects deleted), like `60s`.
    #[arg(long, default_value = "60s", value_parser = sweep_interval)]
    sweep_interval: std::time::Duration,
    /// Shortest lease of a claimed callout, like `60s`: a callout whose result is not
    /// recorded within its lease (or twice the longest timeout of any connection, if longer)
    /// is run again, and a late result of the first run is refused. Expired leases are looked
    /// for every quarter of it.
    #[arg(long, default_value = "60s", value_parser = min_lease)]
    min_lease: std::time::Duration,
}

/// `--scan-command`: a program and its arguments (split at whitespace when used).
fn scan_command(text: &str) -> Result<String, String> {
    if text.split_whitespace().next().is_none() {
        return Err("the scan command is empty; expected a program and its arguments, like \"clamdscan --no-summary -\"".into());
    }
    Ok(text.to_string())
}

/// `--scan-clamd`: a Unix socket path or `host:port`.
fn scan_clamd(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.starts_with('/') {
        return Ok(text.to_string());
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(text.to_string())
        }
        _ => Err(format!(
            "{text:?} is not a clamd address; expected a Unix socket path like /run/clamav/clamd.ctl or HOST:PORT like 127.0.0.1:3310"
        )),
    }
}

/// A duration in the metadata's format, above zero and at most `max`.
fn duration_up_to(text: &str, max: std::time::Duration) -> Result<std::time::Duration, String> {
    let duration = switchboard::metadata::values::HumanDuration::parse(text)?.0;
    if duration.is_zero() || duration > max {
        return Err(format!(
            "{text:?} is out of range; expected a duration from 1ms to {}",
            switchboard::metadata::values::HumanDuration(max)
        ));
    }
    Ok(duration)
}

fn scan_timeout(text: &str) -> Result<std::time::Duration, String> {
    duration_up_to(text, std::time::Duration::from_secs(3600))
}

fn body_timeout(text: &str) -> Result<std::time::Duration, String> {
    duration_up_to(text, std::time::Duration::from_secs(3600))
}

fn header_timeout(text: &str) -> Result<std::time::Duration, String> {
    duration_up_to(text, std::time::Duration::from_secs(3600))
}

fn sweep_interval(text: &str) -> Result<std::time::Duration, String> {
    duration_up_to(text, std::time::Duration::from_secs(24 * 3600))
}

fn min_lease(text: &str) -> Result<std::time::Duration, String> {
    duration_up_to(text, std::time::Duration::from_secs(24 * 3600))
}

#[derive(clap::Args)]
struct CallArgs {
    /// `connection.function`.
    function: String,
    /// The input, a JSON object.
    #[arg(long, default_value = "{}")]
    input: String,
    /// Wait this long for the callout to finish, like `10s` (at most 120s).
    #[arg(long)]
    wait: Option<String>,
    /// An idempotency key.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Caller key (or SWITCHBOARD_API_KEY).
    #[arg(long, env = "SWITCHBOARD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate {
            dir,
            format,
            check_secrets,
        } => validate(&dir, format, check_secrets),
        Command::Functions { dir, format } => functions(&dir, format),
        Command::Schema => {
            print!("{}", schema::editor_schema());
            ExitCode::SUCCESS
        }
        Command::Serve(args) => runtime().block_on(serve(args)),
        Command::Call(args) => runtime().block_on(call(args)),
        Command::Demo(args) => runtime().block_on(demo(args)),
        Command::Import(ImportCommand::Wsdl(args)) => import_wsdl(&args),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            std::process::exit(2);
        }
    }
}

/// Caller keys from SWITCHBOARD_API_KEYS and the key file.
fn caller_keys(file: Option<&Path>) -> Result<Vec<String>, String> {
    let mut keys: Vec<String> = std::env::var("SWITCHBOARD_API_KEYS")
        .unwrap_or_default()
        .split(',')
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read the key file {}: {e}", file.display()))?;
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    Ok(keys)
}

/// Open files kept for the engine's own use (the database, calls to services, uploads to the
/// files bucket, metadata reloads) when the limit of open files caps the API's connections.
const RESERVED_FILES: u64 = 512;

/// `--max-connections`, lowered so that connections leave [`RESERVED_FILES`] of the limit of
/// open files to the engine: a client opening connections must not starve the database and
/// the callouts of descriptors. At least 16.
fn connection_cap(max_connections: u32, open_files: Option<u64>) -> u32 {
    match open_files {
        Some(limit) => {
            let room = limit.saturating_sub(RESERVED_FILES).max(16);
            u32::try_from(room).map_or(max_connections, |room| max_connections.min(room))
        }
        None => max_connections,
    }
}

/// Raises the soft limit of open files to the hard limit, as servers holding many
/// connections do (the soft limit is often 1,024); returns the limit in force.
fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some() && limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(err) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %err, soft = ?limit.current, "cannot raise the limit of open files");
        }
    }
    getrlimit(Resource::Nofile).current
}

async fn serve(args: ServeArgs) -> ExitCode {
    switchboard::observe::init_logging("info");
    let open_files = raise_open_files_limit();
    let max_connections = connection_cap(args.max_connections, open_files);
    if max_connections < args.max_connections {
        tracing::warn!(
            open_files,
            max_connections = args.max_connections,
            cap = max_connections,
            reserved = RESERVED_FILES,
            "the limit of open files is below --max-connections and the files the engine needs \
             itself; at most `cap` connections are served at once, the others wait"
        );
    }
    let mut ring = None;
    let auth = if args.dev {
        tracing::warn!(
            "DEV MODE: caller authentication is OFF; anyone who can reach {} can enqueue callouts",
            args.listen
        );
        CallerAuth::Open
    } else {
        match caller_keys(args.api_key_file.as_deref()) {
            Ok(keys) if keys.is_empty() => {
                eprintln!(
                    "error: no caller keys: set SWITCHBOARD_API_KEYS (comma-separated) or --api-key-file, or run with --dev for local development"
                );
                return ExitCode::from(2);
            }
            Ok(keys) => {
                let keys = switchboard::controller::KeyRing::new(keys);
                ring = Some(keys.clone());
                CallerAuth::Ring(keys)
            }
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::from(2);
            }
        }
    };
    let mut config = ServerConfig::new(&args.metadata, &args.db);
    config.listen = args.listen;
    config.max_concurrent_callouts = args.max_concurrent_callouts.max(1);
    config.auth = auth;
    config.body_limit = args.max_body_bytes;
    config.connections = switchboard::controller::ConnectionLimits {
        header_timeout: args.header_timeout,
        max_connections: max_connections as usize,
        body_timeout: args.body_timeout,
    };
    config.max_concurrent_uploads = args.max_concurrent_uploads as usize;
    config.sweep_interval = args.sweep_interval;
    config.min_lease = args.min_lease;
    let hook = match (args.scan_command, args.scan_clamd) {
        (Some(command), _) => Some(ScanHook::Command(
            command.split_whitespace().map(str::to_string).collect(),
        )),
        (None, Some(addr)) => Some(ScanHook::Clamd(addr)),
        (None, None) => None,
    };
    config.scan = hook.map(|hook| Scanner::new(hook, args.scan_timeout));
    let server = match server::start(config, Loader::new()).await {
        Ok(server) => server,
        Err(ServeError::Engine(StartError::Invalid(problems))) => {
            for p in &problems {
                eprintln!("error: {p}");
            }
            eprintln!(
                "the metadata in {} has {} problem(s); nothing was started",
                args.metadata.display(),
                problems.len()
            );
            return ExitCode::from(1);
        }
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(addr = %server.addr, metadata = %args.metadata.display(), db = %args.db, "switchboard is serving");
    let stop = server.stop_token();
    let engine = server.engine.clone();
    let keys = ring.map(|ring| CallerKeys {
        ring,
        file: args.api_key_file.clone(),
    });
    tokio::spawn(signals(stop, engine, keys));
    server.run_until_stopped().await;
    tracing::info!("switchboard stopped");
    ExitCode::SUCCESS
}

/// The caller keys in use and where they come from, read again on SIGHUP.
struct CallerKeys {
    ring: switchboard::controller::KeyRing,
    file: Option<PathBuf>,
}

impl CallerKeys {
    /// Reads the keys again and puts them in use; keeps the keys in use when they cannot be
    /// read or there are none. Logs how many keys, never a key.
    fn reload(&self) {
        let file = self
            .file
            .as_deref()
            .map_or_else(|| "-".to_string(), |f| f.display().to_string());
        match caller_keys(self.file.as_deref()) {
            Ok(keys) if keys.is_empty() => tracing::error!(
                file,
                kept = self.ring.len(),
                "caller keys not reloaded on SIGHUP: there are none; the keys in use are kept"
            ),
            Ok(keys) => {
                let count = keys.len();
                self.ring.replace(keys);
                tracing::info!(keys = count, file, "caller keys reloaded on SIGHUP");
            }
            Err(message) => tracing::error!(
                error = message,
                kept = self.ring.len(),
                "caller keys not reloaded on SIGHUP; the keys in use are kept"
            ),
        }
    }
}

/// SIGTERM and SIGINT stop the server gracefully; SIGHUP reloads the metadata and the caller
/// keys.
async fn signals(
    stop: tokio_util::sync::CancellationToken,
    engine: switchboard::engine::Engine,
    keys: Option<CallerKeys>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                if let Some(keys) = &keys {
                    keys.reload();
                }
                match engine.reload() {
                    Ok(n) => tracing::info!(connections = n, "metadata reloaded on SIGHUP"),
                    Err(problems) => {
                        for p in &problems {
                            tracing::error!(problem = %p, "reload refused");
                        }
                    }
                }
            }
        }
    }
    tracing::info!("stopping: no new callouts are claimed; in-flight calls may finish");
    stop.cancel();
}

fn import_wsdl(args: &ImportWsdlArgs) -> ExitCode {
    if !switchboard::metadata::validate::is_name(&args.connection) {
        eprintln!(
            "error: --connection {:?} is not a valid connection name; expected lowercase letters, digits and underscores, starting with a letter, like \"billing_v2\"",
            args.connection
        );
        return ExitCode::from(2);
    }
    let options = switchboard::import::WsdlOptions {
        connection: args.connection.clone(),
        allow_private_network: args.allow_private_network,
    };
    match switchboard::import::import_wsdl(&args.file, &args.out, args.force, &options) {
        Ok(path) => {
            println!(
                "wrote {}; check it with `switchboard validate {}`",
                path.display(),
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(if err.is_conversion() { 1 } else { 2 })
        }
    }
}

async fn demo(args: DemoArgs) -> ExitCode {
    // Warnings and errors only: the progress and the summary are the demo's output.
    switchboard::observe::init_logging("warn");
    let options = switchboard::demo::DemoOptions {
        callouts: args.callouts as usize,
        max_concurrent_callouts: args.max_concurrent_callouts as usize,
        listen: args.listen,
        keep_running: args.keep_running,
        deadline: args.timeout,
        ..switchboard::demo::DemoOptions::default()
    };
    match switchboard::demo::run(options).await {
        Ok(switchboard::demo::Verdict::Passed) => ExitCode::SUCCESS,
        Ok(switchboard::demo::Verdict::Failed) => ExitCode::from(1),
        Ok(switchboard::demo::Verdict::Interrupted) => ExitCode::from(130),
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}

async fn call(args: CallArgs) -> ExitCode {
    let input: serde_json::Value = match serde_json::from_str(&args.input) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: --input is not valid JSON: {e}");
            return ExitCode::from(2);
        }
    };
    let mut body = serde_json::json!({ "function": args.function, "input": input });
    if let Some(wait) = &args.wait {
        body["wait"] = serde_json::Value::String(wait.clone());
    }
    if let Some(key) = &args.idempotency_key {
        body["idempotency_key"] = serde_json::Value::String(key.clone());
    }
    let client = match reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(150))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot build an HTTP client: {e}");
            return ExitCode::from(2);
        }
    };
    let url = format!("{}/v1/callouts", args.server.trim_end_matches('/'));
    let mut request = client.post(&url).json(&body);
    if let Some(key) = &args.api_key {
        request = request.bearer_auth(key);
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot reach {url}: {e}");
            return ExitCode::from(2);
        }
    };
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let ended_badly = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(json) => {
            println!("{}", serde_json::to_string_pretty(&json).unwrap_or(text));
            matches!(json["status"].as_str(), Some("failed" | "cancelled"))
        }
        Err(_) => {
            println!("{text}");
            false
        }
    };
    // Exit 1 for a refused request, and for a callout that ended failed or cancelled.
    if status.is_success() && !ended_badly {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Loads `dir`, or says why it cannot be used (exit 2).
fn load(dir: &Path) -> Result<Result<Metadata, Vec<Problem>>, ExitCode> {
    Loader::new().load(dir).map_err(|err| {
        eprintln!("error: {err}");
        ExitCode::from(2)
    })
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn validate(dir: &Path, format: Format, check_secrets: bool) -> ExitCode {
    let loaded = match load(dir) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let (metadata, problems) = match loaded {
        Ok(metadata) => {
            let problems = if check_secrets {
                metadata.check_secrets(&env_var)
            } else {
                Vec::new()
            };
            (Some(metadata), problems)
        }
        Err(problems) => (None, problems),
    };
    let connections = metadata.as_ref().map_or(0, |m| m.connections.len());
    let functions = metadata.as_ref().map_or(0, |m| m.functions().count());
    match format {
        Format::Json => {
            let out = serde_json::json!({
                "valid": problems.is_empty(),
                "connections": connections,
                "functions": functions,
                "problems": problems,
            });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        Format::Text => {
            for p in &problems {
                println!("error: {p}");
            }
            if problems.is_empty() {
                println!(
                    "ok: {} holds {connections} connection{} and {functions} function{}; no problems found",
                    dir.display(),
                    plural(connections),
                    plural(functions)
                );
            } else {
                let mut files: Vec<&Path> = problems.iter().map(|p| p.file.as_path()).collect();
                files.dedup();
                println!(
                    "{} problem{} in {} file{}",
                    problems.len(),
                    plural(problems.len()),
                    files.len(),
                    plural(files.len())
                );
            }
        }
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn functions(dir: &Path, format: Format) -> ExitCode {
    let metadata = match load(dir) {
        Ok(Ok(metadata)) => metadata,
        Ok(Err(problems)) => {
            for p in &problems {
                eprintln!("error: {p}");
            }
            eprintln!(
                "the metadata has problems; run `switchboard validate {}` for details",
                dir.display()
            );
            return ExitCode::from(1);
        }
        Err(code) => return code,
    };
    let rows: Vec<serde_json::Value> = metadata
        .functions()
        .map(|(reference, conn, f)| {
            let request = match &f.request {
                Request::Rest { method, path, .. } => format!("{} {path}", method.as_str()),
                Request::Soap { action, .. } => {
                    format!("SOAP {}", action.as_deref().unwrap_or("(no action)"))
                }
                Request::S3 { operation, key, .. } => {
                    format!("S3 {operation:?} {}", key.as_deref().unwrap_or("")).to_lowercase()
                }
                Request::Plugin { .. } => format!("{} request", conn.type_name),
            };
            serde_json::json!({
                "function": reference,
                "type": conn.type_name,
                "request": request.trim_end(),
                "description": f.description,
                "inputs": f.inputs().iter().map(|i| serde_json::json!({
                    "name": i.name, "type": i.kind, "required": i.required,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        ),
        Format::Text => {
            for row in &rows {
                let inputs: Vec<String> = row["inputs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| {
                        let req = if i["required"] == true {
                            ", required"
                        } else {
                            ""
                        };
                        format!(
                            "{} ({}{req})",
                            i["name"].as_str().unwrap_or(""),
                            i["type"].as_str().unwrap_or("")
                        )
                    })
                    .collect();
                println!(
                    "{}  [{}]  {}",
                    row["function"].as_str().unwrap_or(""),
                    row["request"].as_str().unwrap_or(""),
                    row["description"].as_str().unwrap_or("")
                );
                println!(
                    "    inputs: {}",
                    if inputs.is_empty() {
                        "none".to_string()
                    } else {
                        inputs.join(", ")
                    }
                );
            }
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::connection_cap;

    #[test]
    fn connections_leave_room_for_the_engines_own_files() {
        assert_eq!(connection_cap(10_000, None), 10_000);
        assert_eq!(connection_cap(10_000, Some(1_048_576)), 10_000);
        assert_eq!(connection_cap(10_000, Some(4_096)), 3_584);
        assert_eq!(connection_cap(10_000, Some(1_024)), 512);
        assert_eq!(connection_cap(10_000, Some(100)), 16);
        assert_eq!(connection_cap(8, Some(100)), 8);
    }
}
