//! `mcplex`: command line -> configuration -> gateway -> exit code.

use mcplex::config::Config;
use mcplex::event_loop::Gateway;
use std::process::ExitCode;

const USAGE: &str = "\
mcplex - one MCP endpoint in front of many MCP servers

Usage:
  mcplex -f FILE            serve the configuration in FILE
  mcplex -f FILE --validate check FILE, print every error, and exit
  mcplex -f FILE --watch    serve, and reload FILE whenever it changes (as on SIGHUP)
  mcplex --version          print the version
  mcplex --help             print this help

Options:
  -f, --file FILE   configuration file (YAML)
      --validate    only check the configuration
      --watch       reload the configuration when the file changes

Signals:
  SIGTERM, SIGINT  drain (requests in flight may finish, up to drainTimeout), stop children, exit 0
  SIGHUP           reload the configuration file; new sessions use it, an invalid one is refused

Exit codes:
  0  clean exit (including SIGINT/SIGTERM), or a valid configuration with --validate
  1  invalid configuration
  2  bad command line
  3  runtime failure (for example, a port cannot be bound)
";

fn main() -> ExitCode {
    let mut file = None;
    let mut validate = false;
    let mut watch = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-f" | "--file" => match args.next() {
                Some(f) => file = Some(f),
                None => return usage_error("-f needs a file name"),
            },
            "--validate" => validate = true,
            "--watch" => watch = true,
            "-V" | "--version" => {
                println!("mcplex {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                if let Some(f) = other.strip_prefix("--file=") {
                    file = Some(f.to_string());
                } else {
                    return usage_error(&format!("unknown argument {other:?}"));
                }
            }
        }
    }
    let Some(file) = file else {
        return usage_error("no configuration file given (-f FILE)");
    };
    let cfg = match Config::load(&file) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("mcplex: {file}: {e}");
            }
            return ExitCode::from(1);
        }
    };
    if validate {
        println!("{file}: configuration is valid");
        return ExitCode::SUCCESS;
    }
    let mut gw = match Gateway::new(cfg) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("mcplex: {e}");
            return ExitCode::from(3);
        }
    };
    gw.set_config_file(&file, watch);
    match gw.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcplex: {e}");
            ExitCode::from(3)
        }
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("mcplex: {msg}\n\n{USAGE}");
    ExitCode::from(2)
}
