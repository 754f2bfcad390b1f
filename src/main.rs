//! The `switchboard` command line: arguments → load → run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use switchboard::metadata::{Loader, Metadata, Problem, model::Request, schema};

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
