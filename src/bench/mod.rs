//! Benchmarks that print a table: peapod side by side with its peers, as ratios.

pub mod boot;
pub mod image;
pub mod isolation;
pub mod kvmstat;
pub mod machine;
pub mod models;
pub mod net;
pub mod netperf;
pub mod pod;
pub mod probe;
pub mod report;
pub mod stats;
pub mod workload;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Whether a benchmark that boots VMs (`name`) can run here: `Ok(true)` with hardware KVM,
/// `Ok(false)` when it has to run itself inside the test bed (it says so on stderr), an error
/// inside the test bed without usable KVM.
pub fn kvm_here(name: &str) -> anyhow::Result<bool> {
    match crate::host::HostVirt::probe().hardware_kvm() {
        Ok(_) => Ok(true),
        Err(why) if std::env::var_os("PEAPOD_IN_MACHINE").is_some() => {
            anyhow::bail!("no usable KVM inside the test bed: {why}")
        }
        Err(_) => {
            eprintln!("bench {name}: no hardware KVM here; running inside `peapod machine run`");
            Ok(false)
        }
    }
}

/// A static program a bench carries into pods (`bin`, e.g. `peapod-netbench`): `$ENV`,
/// else `default` (where scripts/setup installs it). It must be static: the pods' busybox
/// image has no glibc to load.
pub fn find_static_program(env: &str, default: &Path, bin: &str) -> anyhow::Result<PathBuf> {
    use std::io::Read;
    let (path, from_env) = match std::env::var_os(env) {
        Some(path) => (PathBuf::from(path), true),
        None => (default.to_path_buf(), false),
    };
    let build = format!(
        "build it with `scripts/build-guest-bins {bin}` and name it with {env}, or run \
         scripts/setup"
    );
    if !path.is_file() {
        match from_env {
            true => anyhow::bail!("{env}={} does not exist: {build}", path.display()),
            false => anyhow::bail!("no static {bin} at {}: {build}", path.display()),
        }
    }
    let mut head = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut head))
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    match net::elf_interpreter(&head) {
        Some(false) => Ok(path),
        Some(true) => anyhow::bail!(
            "{} is dynamically linked; the pod's busybox image cannot run it: {build}",
            path.display()
        ),
        None => anyhow::bail!("{} is not an x86-64 ELF program: {build}", path.display()),
    }
}

/// The median of some durations (zero for none).
pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

/// `a / b` as a ratio string, or "-" where `b` is zero.
pub fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        "-".into()
    } else {
        format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64())
    }
}

/// Runs a benchmark again inside the test bed: `peapod machine run` with `copies` (host path,
/// path inside) and `env` (`KEY=VALUE`), running `peapod ARGS...` there.
/// Carries the guest kernel and agent initramfs named on a benchmark's command line into the
/// L1, names them there (`PEAPOD_GUEST_KERNEL`, `PEAPOD_AGENT_INITRAMFS`) and passes them on
/// to the benchmark run inside.
pub fn carry_guest_artifacts<'a>(
    kernel: Option<&'a Path>,
    agent_initrd: Option<&'a Path>,
    copies: &mut Vec<(&'a Path, &'static str)>,
    env: &mut Vec<String>,
    args: &mut Vec<String>,
) {
    const KERNEL: &str = "/opt/peapod-bench/vmlinux";
    const INITRD: &str = "/opt/peapod-bench/agent-initrd";
    if let Some(kernel) = kernel {
        copies.push((kernel, KERNEL));
        env.push(format!("PEAPOD_GUEST_KERNEL={KERNEL}"));
        args.extend(["--kernel".to_string(), KERNEL.to_string()]);
    }
    if let Some(initrd) = agent_initrd {
        copies.push((initrd, INITRD));
        env.push(format!("PEAPOD_AGENT_INITRAMFS={INITRD}"));
        args.extend(["--agent-initrd".to_string(), INITRD.to_string()]);
    }
}

/// Writes the chart (`--plot`) and prints the report as `--output` asks; `bench` names the
/// benchmark in the chart's line.
pub fn emit_report(
    bench: &str,
    report: &report::Report,
    output: isolation::OutputFormat,
    plot: Option<&Path>,
) -> anyhow::Result<()> {
    if let Some(path) = plot {
        report.write_svg(path)?;
        eprintln!("bench {bench}: chart written to {}", path.display());
    }
    match output {
        isolation::OutputFormat::Markdown => print!("{}", report.markdown()?),
        isolation::OutputFormat::Json => println!("{}", report.json()?),
    }
    Ok(())
}

/// Runs a report-printing benchmark (`args`) inside `peapod machine run`. For `--output json`
/// or `--plot` it asks for JSON inside and renders the report here, so that the chart lands
/// on the host.
pub fn report_from_machine(
    bench: &str,
    copies: &[(&Path, &str)],
    env: &[String],
    mut args: Vec<String>,
    output: isolation::OutputFormat,
    plot: Option<&Path>,
) -> anyhow::Result<()> {
    if output == isolation::OutputFormat::Markdown && plot.is_none() {
        return run_inside_machine(copies, env, &args);
    }
    args.extend(["--output".to_string(), "json".to_string()]);
    let (stdout, status) = run_inside_machine_output(copies, env, &args)?;
    let report = match net::report_in(&stdout) {
        Some(report) => report?,
        None => {
            // no report: the bench failed before its table; say what it printed
            print!("{stdout}");
            status.map_err(anyhow::Error::msg)?;
            anyhow::bail!("the benchmark inside the test bed printed no report");
        }
    };
    use std::io::Write;
    let _ = std::io::stdout().flush();
    emit_report(bench, &report, output, plot)?;
    status.map_err(anyhow::Error::msg)
}

pub fn run_inside_machine(
    copies: &[(&Path, &str)],
    env: &[String],
    args: &[String],
) -> anyhow::Result<()> {
    let status = machine_command(copies, env, args)?.status()?;
    anyhow::ensure!(
        status.success(),
        "the benchmark inside the test bed failed: {status}"
    );
    Ok(())
}

/// [`run_inside_machine`], keeping the benchmark's stdout (its stderr still shows): for a
/// report the host renders itself, such as a chart file, which would stay in the L1. Returns
/// the stdout and whether the benchmark succeeded.
pub fn run_inside_machine_output(
    copies: &[(&Path, &str)],
    env: &[String],
    args: &[String],
) -> anyhow::Result<(String, Result<(), String>)> {
    let out = machine_command(copies, env, args)?
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let status = match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "the benchmark inside the test bed failed: {}",
            out.status
        )),
    };
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), status))
}

fn machine_command(
    copies: &[(&Path, &str)],
    env: &[String],
    args: &[String],
) -> anyhow::Result<Command> {
    let peapod = std::env::current_exe()?;
    let mut command = Command::new(&peapod);
    command.args(["machine", "run", "--timeout", "1200"]);
    for (host, guest) in copies {
        command
            .arg("--copy")
            .arg(format!("{}:{guest}", host.display()));
    }
    for pair in env {
        command.arg("--env").arg(pair);
    }
    command.arg("--").arg("peapod").args(args);
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_ratio() {
        let ms = Duration::from_millis;
        assert_eq!(median(vec![ms(5), ms(1), ms(3)]), ms(3));
        assert_eq!(median(vec![]), Duration::ZERO);
        assert_eq!(ratio(ms(3), ms(2)), "1.50x");
        assert_eq!(ratio(ms(3), Duration::ZERO), "-");
    }
}
