//! `peapod secret create|ls|rm`: the host's secrets, which pods get at start. No command
//! prints a value, and no error quotes one (nor an argument that may hold one).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::pods;
use crate::secret::{self, MAX_DATA_BYTES, Secret, SecretStore};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store a secret: keys from files, stdin or literals
    Create(CreateArgs),
    /// List secrets: names, keys and age, never values
    Ls(LsArgs),
    /// Remove secrets (not one that a running pod uses)
    Rm(RmArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  peapod secret create db --from-file password=./db-password.txt
  printf %s \"$TOKEN\" | peapod secret create api --from-file token=-
  peapod secret create tls --from-file tls.crt=cert.pem --from-file tls.key=key.pem --replace

--from-literal KEY=VALUE puts the value in this command's argv, which any user of the host can
read in /proc (ps) while it runs, and your shell may keep it in its history: --from-file, or
--from-file KEY=- to read the value from stdin, is the safe way.")]
pub struct CreateArgs {
    /// The secret's name: lowercase letters, digits, '-' and '.'
    name: String,
    /// A key whose value is the file's content (PATH alone: the file's name is the key; `-`
    /// reads stdin)
    #[arg(long = "from-file", value_name = "KEY=PATH")]
    from_file: Vec<String>,
    /// A key and its value; visible in /proc while the command runs: prefer --from-file
    #[arg(long = "from-literal", value_name = "KEY=VALUE", value_parser = literal)]
    from_literal: Vec<Literal>,
    /// Replace a secret of that name (all its keys)
    #[arg(long)]
    replace: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  peapod secret ls
  peapod secret ls --format json")]
pub struct LsArgs {
    /// table, or json (one object per line)
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  peapod secret rm db
  peapod secret rm db api")]
pub struct RmArgs {
    /// The secrets' names
    #[arg(required = true)]
    names: Vec<String>,
}

/// A `--from-literal` argument, kept whole until [`run`] splits it, so that neither clap's
/// errors nor `Debug` of the parsed arguments ever show it.
#[derive(Clone)]
pub struct Literal(String);

impl fmt::Debug for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Literal(<redacted>)")
    }
}

fn literal(arg: &str) -> Result<Literal, Infallible> {
    Ok(Literal(arg.to_owned()))
}

pub fn run(cmd: SecretCommand) -> anyhow::Result<ExitCode> {
    let store = SecretStore::from_env();
    match cmd {
        SecretCommand::Create(args) => create(&store, args),
        SecretCommand::Ls(args) => list(&store, args),
        SecretCommand::Rm(args) => remove(&store, args),
    }
}

fn create(store: &SecretStore, args: CreateArgs) -> anyhow::Result<ExitCode> {
    secret::validate_name(&args.name)?;
    let mut data = BTreeMap::new();
    let mut add = |key: String, value: Vec<u8>| -> anyhow::Result<()> {
        secret::validate_key(&args.name, &key)?;
        if data.insert(key.clone(), value).is_some() {
            bail!("secret {}: key {key} is given twice", args.name);
        }
        Ok(())
    };
    let mut read_stdin = false;
    for arg in &args.from_file {
        let (key, path) = match arg.split_once('=') {
            Some((key, path)) => (key.to_owned(), path),
            None if arg == "-" => bail!("--from-file -: give the key too (--from-file KEY=-)"),
            None => {
                let key = Path::new(arg)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .with_context(|| format!("--from-file {arg}: give a key (KEY=PATH)"))?;
                (key.to_owned(), arg.as_str())
            }
        };
        let value = if path == "-" {
            if std::mem::replace(&mut read_stdin, true) {
                bail!("--from-file KEY=- is given twice: stdin holds one value");
            }
            read_limited(io::stdin().lock())
                .with_context(|| format!("secret {}: key {key}: cannot read stdin", args.name))?
        } else {
            File::open(path)
                .and_then(read_limited)
                .with_context(|| format!("secret {}: key {key}: cannot read {path}", args.name))?
        };
        add(key, value)?;
    }
    for Literal(arg) in args.from_literal {
        let Some((key, value)) = arg.split_once('=') else {
            bail!(
                "--from-literal takes KEY=VALUE, and one argument has no '=' (it is not shown: \
                 it may be a value)"
            );
        };
        add(key.to_owned(), value.as_bytes().to_vec())?;
    }
    if data.is_empty() {
        bail!(
            "secret {}: no keys: give --from-file KEY=PATH (or KEY=- for stdin) or \
             --from-literal KEY=VALUE",
            args.name
        );
    }
    let secret = Secret {
        name: args.name,
        data,
    };
    store.create(&secret, args.replace)?;
    println!("{}", secret.name);
    Ok(ExitCode::SUCCESS)
}

/// Reads at most one byte more than a secret may hold, so that a huge file fails fast.
fn read_limited(reader: impl Read) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_DATA_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > MAX_DATA_BYTES {
        return Err(io::Error::other(format!(
            "more than {MAX_DATA_BYTES} bytes (1 MiB), the most a secret holds"
        )));
    }
    Ok(bytes)
}

fn list(store: &SecretStore, args: LsArgs) -> anyhow::Result<ExitCode> {
    let infos = store.list()?;
    match args.format {
        Format::Json => {
            for info in &infos {
                println!("{}", serde_json::to_string(info)?);
            }
        }
        Format::Table => {
            println!("{:<32}  {:<40}  CREATED", "NAME", "KEYS");
            for info in &infos {
                println!(
                    "{:<32}  {:<40}  {} ago",
                    info.name,
                    info.keys.join(","),
                    pods::human_duration(pods::since(info.created_at))
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn remove(store: &SecretStore, args: RmArgs) -> anyhow::Result<ExitCode> {
    let registry = pods::registry();
    Ok(pods::for_each_name(&args.names, |name| {
        let users = secret::users_of(&registry, name)
            .with_context(|| format!("cannot tell which pods use secret {name}"))?;
        match users.as_slice() {
            [] => Ok(store.remove(name)?),
            [pod] => bail!(
                "secret {name} is used by running pod {pod}: stop the pod first \
                 (peapod stop {pod})"
            ),
            pods => bail!(
                "secret {name} is used by running pods {}: stop them first (peapod stop {})",
                pods.join(", "),
                pods.join(" ")
            ),
        }
    }))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn a_literal_is_in_no_debug_output() {
        let cli = Cli::try_parse_from([
            "peapod",
            "secret",
            "create",
            "db",
            "--from-literal",
            "password=s3cr3t-value",
        ])
        .unwrap();
        let debug = format!("{cli:?}");
        assert!(!debug.contains("s3cr3t-value"), "{debug}");
        let Command::Secret(SecretCommand::Create(args)) = cli.command else {
            panic!("{debug}");
        };
        assert_eq!(args.from_literal[0].0, "password=s3cr3t-value");
    }

    #[test]
    fn a_literal_without_a_key_is_refused_unquoted() {
        let args = CreateArgs {
            name: "db".into(),
            from_file: vec![],
            from_literal: vec![Literal("s3cr3t-value".into())],
            replace: false,
        };
        let tmp = tempfile::tempdir().unwrap();
        let err = create(&SecretStore::new(tmp.path()), args).unwrap_err();
        let msg = super::super::error_message(&err);
        assert!(
            !msg.contains("s3cr3t-value") && msg.contains("KEY=VALUE"),
            "{msg}"
        );
    }

    #[test]
    fn create_reads_files_and_literals() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("cert.pem");
        std::fs::write(&file, b"CERT\n").unwrap();
        let store = SecretStore::new(tmp.path().join("secrets"));
        let args = CreateArgs {
            name: "tls".into(),
            from_file: vec![
                format!("tls.crt={}", file.display()),
                file.display().to_string(),
            ],
            from_literal: vec![Literal("mode=a=b".into())],
            replace: false,
        };
        create(&store, args).unwrap();
        let got = store.get("tls").unwrap();
        assert_eq!(got.data["tls.crt"], b"CERT\n");
        assert_eq!(got.data["cert.pem"], b"CERT\n");
        assert_eq!(got.data["mode"], b"a=b");
    }
}
