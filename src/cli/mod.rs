//! The command line: one file per verb. Arguments become typed configs here; errors become
//! exit codes in `main`.

mod bench;
mod doctor;
mod exec;
mod host_agent;
mod image;
mod inspect;
mod kill;
mod logs;
mod machine;
mod pod;
mod pods;
mod port;
mod ps;
mod rm;
mod run;
mod secret;
mod stop;
mod supervise;
pub mod tty;
pub mod vm;
mod wait;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status when peapod itself fails (as podman and docker do).
pub const EXIT_PEAPOD_ERROR: u8 = 125;
/// Exit status of `peapod machine run` when the L1 ran past its --timeout (as timeout(1)).
pub use machine::EXIT_TIMEOUT as EXIT_MACHINE_TIMEOUT;

/// Log lines to stderr. PEAPOD_LOG takes a filter (`debug`, `peapod=trace`, ...); without it,
/// warnings and errors only, through a plain level check (a VMM process then never parses a
/// filter).
pub fn init_logging() {
    init_logging_to(std::io::stderr);
}

/// [`init_logging`] for a process whose stderr is a log file of a pod (the VMM's `vmm.log`,
/// the supervisor's `supervisor.log`): what a guest makes it log stops at
/// [`crate::logfile::PROCESS_LOG_MAX_BYTES`], with a marker line.
pub fn init_capped_logging(what: &'static str) {
    let capped = crate::logfile::CappedWriter::new(
        std::io::stderr(),
        what,
        crate::logfile::PROCESS_LOG_MAX_BYTES,
    );
    init_logging_to(std::sync::Mutex::new(capped));
}

fn init_logging_to<W>(writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let logs = tracing_subscriber::fmt().with_writer(writer).without_time();
    match std::env::var("PEAPOD_LOG") {
        Ok(filter) => logs
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .init(),
        Err(_) => logs.with_max_level(tracing::Level::WARN).init(),
    }
}

impl Cli {
    /// Parses the command line. `peapod run`'s (the verb on a pod's start path) is tried
    /// alone first: building every verb's parser is 4-5 ms of a container's start in the
    /// emulated test bed. Whatever that does not take as it stands (`--help`, an error)
    /// goes through the whole parser, which says what `--help` and errors should.
    pub fn try_parse_args() -> Result<Cli, clap::Error> {
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        Self::try_parse_from_args(args)
    }

    fn try_parse_from_args(args: Vec<std::ffi::OsString>) -> Result<Cli, clap::Error> {
        if args.get(1).is_some_and(|verb| verb == "run")
            && let Some(cli) = Self::parse_run_alone(&args)
        {
            return Ok(cli);
        }
        <Cli as Parser>::try_parse_from(args)
    }

    /// `args` through a parser of `run` alone, if it takes them.
    fn parse_run_alone(args: &[std::ffi::OsString]) -> Option<Cli> {
        use clap::{Args, FromArgMatches};
        let only_run = clap::Command::new("peapod")
            .subcommand(run::RunArgs::augment_args(clap::Command::new("run")));
        let matches = only_run.try_get_matches_from(args).ok()?;
        Cli::from_arg_matches(&matches).ok()
    }

    /// Which log this command's stderr is, when a pod's run directory holds it and so it must
    /// stay bounded: a VMM's (`vm boot`) or a supervisor's.
    pub fn capped_log(&self) -> Option<&'static str> {
        match &self.command {
            Command::Vm(vm::VmCommand::Boot(_)) => Some("the VMM log"),
            Command::Supervise(_) => Some("the supervisor log"),
            Command::HostAgent(_) => Some("the host agent log"),
            _ => None,
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "peapod",
    version,
    about = "Pods in KVM microVMs: the pod is the shell, the containers are the peas"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in a new pod (its own microVM), in the foreground or with -d in the
    /// background
    Run(run::RunArgs),
    /// Pods from Kubernetes YAML (`peapod pod apply -f FILE`)
    #[command(subcommand)]
    Pod(pod::PodCommand),
    /// List pods
    Ps(ps::PsArgs),
    /// Print a pod's container logs
    Logs(logs::LogsArgs),
    /// Run a command in a running pod
    Exec(exec::ExecArgs),
    /// Stop pods: SIGTERM, SIGKILL after a grace period, VM off
    Stop(stop::StopArgs),
    /// Send a signal to a pod's containers
    Kill(kill::KillArgs),
    /// Remove pods
    Rm(rm::RmArgs),
    /// Block until a pod ends, print its exit code
    Wait(wait::WaitArgs),
    /// A pod's spec and state as JSON
    Inspect(inspect::InspectArgs),
    /// A pod's published ports
    Port(port::PortArgs),
    /// Secrets that pods get at start: create, list, remove (values are never printed)
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// The per-pod supervisor (started by `peapod run`)
    #[command(hide = true)]
    Supervise(supervise::SuperviseArgs),
    /// A host pod's agent (started by the supervisor of a `--runtime container` pod)
    #[command(hide = true)]
    HostAgent(host_agent::HostAgentArgs),
    /// The nested host VM (L1) that gives hosts without hardware KVM a real /dev/kvm.
    #[command(subcommand)]
    Machine(machine::MachineCommand),
    /// Print what this host has for running pods, and how to fix what is missing.
    Doctor(doctor::DoctorArgs),
    /// Low-level microVM commands.
    #[command(subcommand)]
    Vm(vm::VmCommand),
    /// Benchmarks that print a table.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// OCI images: import, list, inspect, remove, prune, and guest block images.
    #[command(subcommand)]
    Image(image::ImageCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Pod(cmd) => pod::run(cmd),
        Command::Ps(args) => ps::run(args),
        Command::Logs(args) => logs::run(args),
        Command::Exec(args) => exec::run(args),
        Command::Stop(args) => stop::run(args),
        Command::Kill(args) => kill::run(args),
        Command::Rm(args) => rm::run(args),
        Command::Wait(args) => wait::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Port(args) => port::run(args),
        Command::Secret(cmd) => secret::run(cmd),
        Command::Supervise(args) => supervise::run(args),
        Command::HostAgent(args) => host_agent::run(args),
        Command::Machine(cmd) => machine::run(cmd),
        Command::Doctor(args) => doctor::run(args),
        Command::Vm(cmd) => vm::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Image(cmd) => image::run(cmd),
    }
}

/// An error and its causes on one line, `outer: cause: root cause`, leaving out a cause whose
/// text the line holds already (many of our error messages name their source themselves, and
/// `{:#}` would then print it twice).
pub fn error_message(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read /x: {source}")]
    struct ReadError {
        #[source]
        source: std::io::Error,
    }

    /// `run` parsed alone reads every command line as the whole parser does; what it
    /// does not take (help, version, errors, other verbs) is the whole parser's.
    #[test]
    fn run_parsed_alone_reads_as_the_whole_parser() {
        let line = |text: &str| -> Vec<std::ffi::OsString> {
            text.split(' ').map(std::ffi::OsString::from).collect()
        };
        for text in [
            "peapod run --rm peapod/busybox echo hi",
            "peapod run --rm --runtime container --network none peapod/busybox echo -n hi",
            "peapod run -d --name web -p 127.0.0.1:8080:80 -e A=1 --memory 512m img httpd -f",
            "peapod run -it --rm img sh",
            "peapod run --rm -v /srv:/site:ro img ls /site",
            "peapod run --rm img -- ls -l",
        ] {
            let alone = Cli::parse_run_alone(&line(text)).expect(text);
            let whole = <Cli as Parser>::try_parse_from(line(text)).expect(text);
            assert_eq!(format!("{alone:?}"), format!("{whole:?}"), "{text}");
        }
        for text in [
            "peapod run --help",
            "peapod run",
            "peapod run --no-such-flag img",
            "peapod ps -a",
        ] {
            let whole = <Cli as Parser>::try_parse_from(line(text));
            let ours = Cli::try_parse_from_args(line(text));
            assert_eq!(
                format!("{:?}", whole.as_ref().map_err(|e| e.kind())),
                format!("{:?}", ours.as_ref().map_err(|e| e.kind())),
                "{text}"
            );
            if let (Err(a), Err(b)) = (&whole, &ours) {
                assert_eq!(a.to_string(), b.to_string(), "{text}");
            }
        }
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = anyhow::Error::new(ReadError { source: io }).context("cannot import");
        assert_eq!(
            error_message(&err),
            "cannot import: cannot read /x: no such file"
        );
        let plain = anyhow::anyhow!("root").context("middle").context("top");
        assert_eq!(error_message(&plain), "top: middle: root");
    }
}
