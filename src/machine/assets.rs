//! The host files the L1 is made of, all from Debian packages: QEMU (qemu-system-x86), a
//! kernel with its KVM and networking modules (linux-image-cloud-amd64), busybox
//! (busybox-static), and, where the host has them, what pod networking runs: the CNI
//! plugins (containernetworking-plugins) and iptables (iptables, the nft flavour).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("{0} not found in PATH: install it with `apt-get install qemu-system-x86`")]
    NoQemu(String),
    #[error(
        "{0}: no such QEMU binary (give the path of a qemu-system-x86_64, or leave out --qemu \
         for $PEAPOD_QEMU or the one on PATH)"
    )]
    NoGivenQemu(String),
    #[error(
        "no L1 kernel: no /boot/vmlinuz-* has KVM modules under /lib/modules/<version>; install one \
         with `apt-get install linux-image-cloud-amd64`, or name one with PEAPOD_L1_KERNEL"
    )]
    NoKernel,
    #[error(
        "L1 kernel {kernel} has no modules at {modules}: install the matching linux-image package"
    )]
    NoModules { kernel: PathBuf, modules: PathBuf },
    #[error("busybox not found at {0}: install it with `apt-get install busybox-static`")]
    NoBusybox(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel module {module} is not in {dep_file}")]
    NoModule { module: String, dep_file: PathBuf },
    #[error("module dependency loop at {0}")]
    ModuleLoop(String),
    #[error("cannot run `ldd {path}`: {source}")]
    Ldd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} needs {library}, which this host does not have")]
    MissingLibrary { path: PathBuf, library: String },
}

/// The kernel modules pods need in the L1 beyond KVM's, by name; their dependencies come
/// from `modules.dep`. The cloud kernel builds these as modules (its config says `=m`):
/// overlay for the roots of `--runtime container` pods; vhost_vsock for the QEMU peer of the
/// benchmarks (its guest's agent answers over vsock); veth and bridge for the CNI bridge plugin; tun for the VMM's tap; sch_ingress, the
/// classifiers and act_mirred for the tc redirect that joins tap and veth; nf_tables with
/// nft_compat, the nat chain and the xt matches/targets for the bridge plugin's `ipMasq`
/// through Debian's iptables-nft. (IPv6, NF_TABLES_IPV4/INET and NF_NAT_MASQUERADE are
/// built in.) A name the kernel lacks is skipped: networking then fails where it is used.
pub const NET_MODULES: &[&str] = &[
    "overlay",
    "vhost_vsock",
    "tun",
    "veth",
    "bridge",
    "sch_ingress",
    "cls_matchall",
    "cls_u32",
    "act_mirred",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
    "nf_nat",
    "nf_conntrack",
    "xt_MASQUERADE",
    "xt_comment",
    "xt_conntrack",
    "xt_addrtype",
    "xt_tcpudp",
    "xt_mark",
    "xt_nat",
];

/// The host's CNI plugin directory (Debian's containernetworking-plugins).
pub const HOST_CNI_DIR: &str = "/usr/lib/cni";
/// The plugins the L1 carries: what the default `peapod` network and the usual
/// bridge/ptp networks chain (each is a 2-3 MB Go binary; all 16 would add 44 MB to every
/// L1's initramfs, unpacked by an emulated CPU).
pub const L1_CNI_PLUGINS: &[&str] = &[
    "bridge",
    "host-local",
    "loopback",
    "portmap",
    "ptp",
    "static",
    "firewall",
    "tuning",
];
/// iptables' nft flavour; `iptables` and friends are links to it.
pub const HOST_XTABLES: &str = "/usr/sbin/xtables-nft-multi";
/// The extensions iptables dlopens (so `ldd` of the binary does not list them).
pub const HOST_XTABLES_LIBS: &str = "/usr/lib/x86_64-linux-gnu/xtables";
/// The names iptables answers to, all links to [`HOST_XTABLES`] in the L1.
pub const XTABLES_NAMES: &[&str] = &[
    "iptables",
    "iptables-save",
    "iptables-restore",
    "iptables-nft",
    "iptables-nft-save",
    "iptables-nft-restore",
    "ip6tables",
    "ip6tables-save",
    "ip6tables-restore",
    "ip6tables-nft",
    "ip6tables-nft-save",
    "ip6tables-nft-restore",
];
/// Files iptables reads by name (`-p tcp`, ebtables' ethertypes).
pub const NET_ETC_FILES: &[&str] = &["/etc/protocols", "/etc/ethertypes"];

/// What of pod networking's userland this host has; each part is optional (the L1 then
/// has no networking, and the CNI code says what is missing when it is used).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkTools {
    /// The CNI plugins, one executable each.
    pub cni_plugins: Vec<PathBuf>,
    /// xtables-nft-multi, when the host has it.
    pub xtables: Option<PathBuf>,
    /// iptables' extension libraries.
    pub xtables_libs: Vec<PathBuf>,
    /// /etc files iptables reads.
    pub etc_files: Vec<PathBuf>,
}

impl NetworkTools {
    pub fn find() -> Self {
        let files_in = |dir: &str, keep: fn(&Path) -> bool| -> Vec<PathBuf> {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && keep(p))
                .collect();
            files.sort();
            files
        };
        let xtables = Path::new(HOST_XTABLES);
        NetworkTools {
            cni_plugins: files_in(HOST_CNI_DIR, |p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| L1_CNI_PLUGINS.contains(&n))
                    && is_elf(p)
            }),
            xtables: xtables.is_file().then(|| xtables.to_path_buf()),
            xtables_libs: if xtables.is_file() {
                files_in(HOST_XTABLES_LIBS, |p| {
                    p.extension().is_some_and(|e| e == "so")
                })
            } else {
                Vec::new()
            },
            etc_files: NET_ETC_FILES
                .iter()
                .map(PathBuf::from)
                .filter(|p| p.is_file())
                .collect(),
        }
    }
}

/// The L1's parts, found on this host.
#[derive(Debug, Clone)]
pub struct L1Assets {
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    pub modules_dir: PathBuf,
    pub busybox: PathBuf,
}

impl L1Assets {
    /// Finds every part or says which package is missing.
    pub fn find() -> Result<Self, AssetError> {
        Self::find_with_qemu(None)
    }

    /// As [`L1Assets::find`], with the QEMU binary given (a path, or a name on PATH) instead
    /// of found.
    pub fn find_with_qemu(qemu: Option<&Path>) -> Result<Self, AssetError> {
        let qemu = match qemu {
            Some(q) => find_in_path(&q.to_string_lossy())
                .ok_or_else(|| AssetError::NoGivenQemu(q.display().to_string()))?,
            None => find_qemu()?,
        };
        let (kernel, modules_dir) = find_kernel()?;
        Ok(L1Assets {
            qemu,
            kernel,
            modules_dir,
            busybox: find_busybox()?,
        })
    }

    /// Load order (dependencies first) of the KVM modules for each virtualization extension:
    /// `svm` → kvm_amd, `vmx` → kvm_intel.
    pub fn kvm_modules(&self) -> Result<BTreeMap<&'static str, Vec<PathBuf>>, AssetError> {
        let deps = ModuleDeps::read(&self.modules_dir)?;
        let mut order = BTreeMap::new();
        order.insert("svm", deps.load_order("kvm_amd")?);
        order.insert("vmx", deps.load_order("kvm_intel")?);
        Ok(order)
    }

    /// Load order (dependencies first) of [`NET_MODULES`]; modules built into the kernel
    /// or missing from it are left out (a missing one with a note in the debug log).
    pub fn net_modules(&self) -> Result<Vec<PathBuf>, AssetError> {
        let deps = ModuleDeps::read(&self.modules_dir)?;
        let builtin =
            std::fs::read_to_string(self.modules_dir.join("modules.builtin")).unwrap_or_default();
        let builtin: Vec<String> = builtin.lines().map(module_name).collect();
        let mut order: Vec<PathBuf> = Vec::new();
        for name in NET_MODULES {
            match deps.load_order(name) {
                Ok(files) => {
                    for file in files {
                        if !order.contains(&file) {
                            order.push(file);
                        }
                    }
                }
                Err(AssetError::NoModule { .. }) => {
                    if !builtin.contains(&name.replace('-', "_")) {
                        tracing::debug!(module = name, "the L1 kernel lacks a networking module");
                    }
                }
                Err(err) => return Err(err),
            }
        }
        Ok(order)
    }
}

pub fn find_qemu() -> Result<PathBuf, AssetError> {
    let name = std::env::var("PEAPOD_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
    find_in_path(&name).ok_or(AssetError::NoQemu(name))
}

pub fn find_busybox() -> Result<PathBuf, AssetError> {
    let path =
        PathBuf::from(std::env::var("PEAPOD_BUSYBOX").unwrap_or_else(|_| "/bin/busybox".into()));
    if path.is_file() {
        Ok(path)
    } else {
        Err(AssetError::NoBusybox(path))
    }
}

/// The L1 kernel image and its modules directory: `PEAPOD_L1_KERNEL`, else the newest
/// `/boot/vmlinuz-*` with KVM modules, cloud kernels first (they boot fastest).
pub fn find_kernel() -> Result<(PathBuf, PathBuf), AssetError> {
    if let Ok(path) = std::env::var("PEAPOD_L1_KERNEL") {
        let kernel = PathBuf::from(path);
        let modules = modules_dir_for(&kernel);
        if !modules.join("modules.dep").is_file() {
            return Err(AssetError::NoModules { kernel, modules });
        }
        return Ok((kernel, modules));
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/boot")
        .map_err(|_| AssetError::NoKernel)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
                && modules_dir_for(path).join("kernel/arch/x86/kvm").is_dir()
        })
        .collect();
    candidates.sort_by_key(|path| {
        let name = path.to_string_lossy().into_owned();
        (name.contains("cloud"), name)
    });
    let kernel = candidates.pop().ok_or(AssetError::NoKernel)?;
    let modules = modules_dir_for(&kernel);
    Ok((kernel, modules))
}

fn modules_dir_for(kernel: &Path) -> PathBuf {
    let name = kernel.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let version = name.strip_prefix("vmlinuz-").unwrap_or(name);
    PathBuf::from("/lib/modules").join(version)
}

pub fn find_in_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return path.is_file().then_some(path);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// A kernel's `modules.dep`: module name → (file, direct dependencies).
#[derive(Debug)]
pub struct ModuleDeps {
    dir: PathBuf,
    modules: BTreeMap<String, (PathBuf, Vec<String>)>,
}

impl ModuleDeps {
    pub fn read(modules_dir: &Path) -> Result<Self, AssetError> {
        let dep_file = modules_dir.join("modules.dep");
        let text = std::fs::read_to_string(&dep_file).map_err(|source| AssetError::Read {
            path: dep_file.clone(),
            source,
        })?;
        Ok(Self::parse(modules_dir, &text))
    }

    pub fn parse(modules_dir: &Path, text: &str) -> Self {
        let mut modules = BTreeMap::new();
        for line in text.lines() {
            let Some((file, deps)) = line.split_once(':') else {
                continue;
            };
            let deps = deps.split_whitespace().map(module_name).collect();
            modules.insert(module_name(file), (modules_dir.join(file), deps));
        }
        ModuleDeps {
            dir: modules_dir.to_path_buf(),
            modules,
        }
    }

    /// The files to load, dependencies first, to get `module` loaded.
    pub fn load_order(&self, module: &str) -> Result<Vec<PathBuf>, AssetError> {
        let mut order = Vec::new();
        self.visit(&module.replace('-', "_"), &mut order, &mut Vec::new())?;
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        order: &mut Vec<PathBuf>,
        path: &mut Vec<String>,
    ) -> Result<(), AssetError> {
        let (file, deps) = self.modules.get(name).ok_or_else(|| AssetError::NoModule {
            module: name.to_string(),
            dep_file: self.dir.join("modules.dep"),
        })?;
        if order.contains(file) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            return Err(AssetError::ModuleLoop(name.to_string()));
        }
        path.push(name.to_string());
        for dep in deps {
            self.visit(dep, order, path)?;
        }
        path.pop();
        order.push(file.clone());
        Ok(())
    }
}

/// `kernel/arch/x86/kvm/kvm-amd.ko` → `kvm_amd` (module names treat `-` and `_` alike).
fn module_name(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

/// Whether a file is an ELF binary (by its magic).
pub fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// The shared libraries (and the dynamic loader) an ELF binary needs, as host paths.
/// A static binary needs none.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, AssetError> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|source| AssetError::Ldd {
            path: binary.to_path_buf(),
            source,
        })?;
    parse_ldd(binary, &String::from_utf8_lossy(&output.stdout))
}

/// [`shared_libraries`] of many files with one `ldd` run, without repeats.
pub fn shared_libraries_of_all(binaries: &[PathBuf]) -> Result<Vec<PathBuf>, AssetError> {
    let Some(first) = binaries.first() else {
        return Ok(Vec::new());
    };
    let output = Command::new("ldd")
        .args(binaries)
        .output()
        .map_err(|source| AssetError::Ldd {
            path: first.clone(),
            source,
        })?;
    let mut libs = parse_ldd(first, &String::from_utf8_lossy(&output.stdout))?;
    libs.sort();
    libs.dedup();
    Ok(libs)
}

fn parse_ldd(binary: &Path, text: &str) -> Result<Vec<PathBuf>, AssetError> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        // `ldd a b` heads each file's list with "a:"
        if line.ends_with(':') {
            continue;
        }
        let target = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    return Err(AssetError::MissingLibrary {
                        path: binary.to_path_buf(),
                        library: name.trim().to_string(),
                    });
                }
                target
            }
            None => line,
        };
        let path = target.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko
kernel/arch/x86/kvm/kvm-intel.ko: kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko
kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko
kernel/virt/lib/irqbypass.ko:
kernel/a.ko: kernel/b.ko
kernel/b.ko: kernel/a.ko
";

    #[test]
    fn modules_load_dependencies_first() {
        let deps = ModuleDeps::parse(Path::new("/m"), DEP);
        let order = deps.load_order("kvm-amd").unwrap();
        assert_eq!(
            order,
            [
                "/m/kernel/virt/lib/irqbypass.ko",
                "/m/kernel/arch/x86/kvm/kvm.ko",
                "/m/kernel/arch/x86/kvm/kvm-amd.ko"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn unknown_modules_and_loops_are_errors() {
        let deps = ModuleDeps::parse(Path::new("/m"), DEP);
        assert!(matches!(
            deps.load_order("nope"),
            Err(AssetError::NoModule { .. })
        ));
        assert!(matches!(
            deps.load_order("a"),
            Err(AssetError::ModuleLoop(_))
        ));
    }

    #[test]
    fn ldd_output_gives_library_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        let libs = parse_ldd(Path::new("/bin/x"), text).unwrap();
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(
            parse_ldd(Path::new("/x"), "\tnot a dynamic executable\n")
                .unwrap()
                .is_empty()
        );
        let err = parse_ldd(Path::new("/x"), "\tlibfoo.so => not found\n").unwrap_err();
        assert!(err.to_string().contains("libfoo.so"), "{err}");
    }

    #[test]
    fn ldd_of_many_files_skips_the_headers() {
        let text = "/a.so:\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n/b.so:\n\tlibm.so.6 => /lib/libm.so.6 (0x2)\n";
        let libs = parse_ldd(Path::new("/a.so"), text).unwrap();
        assert_eq!(
            libs,
            ["/lib/libc.so.6", "/lib/libm.so.6"].map(PathBuf::from)
        );
    }

    #[test]
    fn the_l1_kernel_has_the_networking_modules() {
        let Ok((kernel, modules_dir)) = find_kernel() else {
            eprintln!("skipped: no L1 kernel on this host");
            return;
        };
        let l1 = L1Assets {
            qemu: PathBuf::new(),
            kernel,
            modules_dir,
            busybox: PathBuf::new(),
        };
        let order = l1.net_modules().unwrap();
        let names: Vec<String> = order
            .iter()
            .map(|p| module_name(&p.to_string_lossy()))
            .collect();
        for needed in [
            "overlay",
            "veth",
            "bridge",
            "tun",
            "nf_tables",
            "nft_compat",
            "xt_masquerade",
        ] {
            assert!(
                names.iter().any(|n| n.eq_ignore_ascii_case(needed)),
                "{needed}: {names:?}"
            );
        }
        // dependencies first: llc before stp before bridge, nf_conntrack before nf_nat
        let at = |n: &str| names.iter().position(|m| m == n).unwrap();
        assert!(
            at("llc") < at("stp") && at("stp") < at("bridge"),
            "{names:?}"
        );
        assert!(at("nf_conntrack") < at("nf_nat"), "{names:?}");
    }

    #[test]
    fn a_dynamic_program_needs_libc_and_this_static_test_binary_nothing() {
        // the shell is a dynamic program on Debian (dash)
        let sh = std::fs::canonicalize(find_in_path("sh").expect("a shell in PATH")).unwrap();
        assert!(is_elf(&sh));
        let libs = shared_libraries(&sh).unwrap();
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        // peapod's binaries are static-pie (.cargo/config.toml): `ldd` says "statically linked"
        let me = std::env::current_exe().unwrap();
        assert_eq!(shared_libraries(&me).unwrap(), Vec::<PathBuf>::new());
    }
}
