//! Resolving archive paths inside a root directory, never leaving it: what `securejoin` and
//! openat2's `RESOLVE_IN_ROOT` do, as a component-by-component walk.
//!
//! Entry names are cleaned lexically first, and a `..` that would climb above the root is an
//! error (no honest archive has one). Then each parent component is looked up on disk with
//! lstat: a directory is entered, a missing one is created (archives may leave parents out),
//! and a symlink is followed *as if the root were `/`*: an absolute target restarts at the
//! root, and `..` stops at the root. The last component is never followed: the caller
//! replaces whatever is there. So `link -> /etc` followed by `link/passwd` writes
//! `ROOT/etc/passwd`, as the container would see it, and nothing outside.
//!
//! The walk uses paths, not directory file descriptors: the root is a fresh private
//! directory that only this process writes, so nothing changes between a check and its use;
//! the archive is the only hostile input.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed while resolving one path, as Linux's MAXSYMLINKS.
const MAX_SYMLINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error(
        "path {0:?} climbs out of the image root with '..': the archive is malformed or malicious"
    )]
    Escape(String),
    #[error("path {path:?}: {component:?} is not a directory")]
    NotADirectory { path: String, component: String },
    #[error("path {0:?}: too many levels of symbolic links")]
    SymlinkLoop(String),
    #[error("path {path:?}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// The normal components of an archive path, `..` applied lexically. A leading `/` is
/// dropped (the path is taken relative to the root); `..` above the top is an error.
pub fn clean(path: &Path) -> Result<Vec<OsString>, ConfineError> {
    let mut parts: Vec<OsString> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => parts.push(name.to_os_string()),
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(ConfineError::Escape(path.display().to_string()));
                }
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(parts)
}

enum Step {
    Name(OsString),
    Up,
}

/// Finds (or, with `create`, makes) the directory named by `parts` under `root`, following
/// symlinks inside the root only. Returns its host path, or `Ok(None)` if a component is
/// missing and `create` is false.
pub fn resolve_dir(
    root: &Path,
    parts: &[OsString],
    create: bool,
) -> Result<Option<PathBuf>, ConfineError> {
    let shown = || {
        parts
            .iter()
            .map(|p| p.to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut todo: Vec<Step> = parts.iter().rev().map(|p| Step::Name(p.clone())).collect();
    // The directories entered so far, relative to the root; they are all real directories.
    let mut stack: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(step) = todo.pop() {
        let name = match step {
            Step::Up => {
                stack.pop();
                continue;
            }
            Step::Name(name) => name,
        };
        let here = join(root, &stack).join(&name);
        match fs::symlink_metadata(&here) {
            Ok(meta) if meta.is_dir() => stack.push(name),
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(ConfineError::SymlinkLoop(shown()));
                }
                let target = fs::read_link(&here).map_err(|source| ConfineError::Io {
                    path: shown(),
                    source,
                })?;
                if target.is_absolute() {
                    stack.clear();
                }
                for component in target.components().rev() {
                    match component {
                        Component::Normal(n) => todo.push(Step::Name(n.to_os_string())),
                        Component::ParentDir => todo.push(Step::Up),
                        Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                    }
                }
            }
            Ok(_) => {
                return Err(ConfineError::NotADirectory {
                    path: shown(),
                    component: name.to_string_lossy().into_owned(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !create {
                    return Ok(None);
                }
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&here)
                    .map_err(|source| ConfineError::Io {
                        path: shown(),
                        source,
                    })?;
                stack.push(name);
            }
            Err(source) => {
                return Err(ConfineError::Io {
                    path: shown(),
                    source,
                });
            }
        }
    }
    Ok(Some(join(root, &stack)))
}

/// The host path of `parts` if every component is a real directory (no symlinks) except
/// possibly the last, which must exist. Used to revisit paths after later layers may have
/// replaced a directory with a symlink.
pub fn lookup_no_symlinks(root: &Path, parts: &[OsString]) -> Option<PathBuf> {
    let mut here = root.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        here.push(part);
        let meta = fs::symlink_metadata(&here).ok()?;
        if i + 1 < parts.len() && !meta.is_dir() {
            return None;
        }
    }
    Some(here)
}

fn join(root: &Path, stack: &[OsString]) -> PathBuf {
    let mut path = root.to_path_buf();
    path.extend(stack);
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn parts(s: &str) -> Vec<OsString> {
        clean(Path::new(s)).unwrap()
    }

    #[test]
    fn clean_confines_lexically() {
        assert_eq!(parts("/a/./b//c/"), parts("a/b/c"));
        assert_eq!(parts("a/x/../b"), parts("a/b"));
        assert!(parts("./").is_empty());
        assert!(clean(Path::new("../etc/passwd")).is_err());
        assert!(clean(Path::new("a/../../etc")).is_err());
        assert!(clean(Path::new("/../etc")).is_err());
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("etc")).unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../../..", root.join("up")).unwrap();
        symlink("up/etc", root.join("chain")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        assert_eq!(
            resolve_dir(root, &parts("abs"), false).unwrap().unwrap(),
            root.join("etc")
        );
        assert_eq!(
            resolve_dir(root, &parts("up"), false).unwrap().unwrap(),
            root.to_path_buf()
        );
        assert_eq!(
            resolve_dir(root, &parts("chain"), false).unwrap().unwrap(),
            root.join("etc")
        );
        assert!(matches!(
            resolve_dir(root, &parts("loop"), false),
            Err(ConfineError::SymlinkLoop(_))
        ));
        assert_eq!(resolve_dir(root, &parts("nope/x"), false).unwrap(), None);
        assert_eq!(
            resolve_dir(root, &parts("up/new/dir"), true)
                .unwrap()
                .unwrap(),
            root.join("new/dir")
        );
        assert!(lookup_no_symlinks(root, &parts("abs/x")).is_none());
        assert_eq!(
            lookup_no_symlinks(root, &parts("new/dir")).unwrap(),
            root.join("new/dir")
        );
    }
}
