//! The host files the L1 is made of, all from Debian packages: QEMU (qemu-system-x86), a
//! kernel with its KVM modules (linux-image-cloud-amd64) and busybox (busybox-static).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("{0} not found in PATH: install it with `apt-get install qemu-system-x86`")]
    NoQemu(String),
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
        let (kernel, modules_dir) = find_kernel()?;
        Ok(L1Assets {
            qemu: find_qemu()?,
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

fn parse_ldd(binary: &Path, text: &str) -> Result<Vec<PathBuf>, AssetError> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
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
    fn this_test_binary_needs_libc() {
        let me = std::env::current_exe().unwrap();
        assert!(is_elf(&me));
        let libs = shared_libraries(&me).unwrap();
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
    }
}
