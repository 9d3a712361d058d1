//! `kind: Secret`: `data` (base64) and `stringData` (plain, wins on the same key). No
//! message here ever holds a value: only keys.

use std::collections::BTreeMap;

use base64::Engine;

use super::node::{Class, Ctx, Node, Table};
use super::pod::METADATA;
use super::{KubeError, KubeSecret, is_dns_subdomain};

use Class::{Harmless, Supported};

const SECRET: Table = &[
    ("apiVersion", Supported),
    ("kind", Supported),
    ("metadata", Supported),
    ("type", Supported),
    ("data", Supported),
    ("stringData", Supported),
    ("immutable", Harmless),
];

pub(super) fn parse(ctx: &mut Ctx, doc: &Node) -> Result<KubeSecret, KubeError> {
    let top = ctx.fields(doc, "", SECRET)?;
    let Some(m) = top.get("metadata") else {
        return Err(ctx.err(doc.line, "metadata.name", "required"));
    };
    let m = m.fields(ctx, METADATA)?;
    let name = m.required_str(ctx, "name")?;
    if !is_dns_subdomain(name) {
        return Err(ctx.err(
            m.get("name").map_or(m.line, |f| f.line),
            "metadata.name",
            format!(
                "{name:?} is not a valid Secret name: use lowercase letters, digits, '-' and \
                 '.' (a DNS-1123 subdomain)"
            ),
        ));
    }
    // Labels and annotations mean nothing on a stored secret.
    for key in ["labels", "annotations"] {
        if let Some(f) = m.get(key) {
            ctx.harmless.push(f.path);
        }
    }
    if let Some(f) = top.get("type") {
        let t = f.str(ctx)?;
        if t != "Opaque" {
            ctx.harmless.push(format!("type: {t} (used as Opaque)"));
        }
    }
    let mut data = BTreeMap::new();
    if let Some(f) = top.get("data") {
        for (key, value, field) in f.string_map(ctx)? {
            check_key(ctx, &field.path, field.line, &key)?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .map_err(|_| field.err(ctx, "not valid base64 (put plain text in stringData)"))?;
            data.insert(key, bytes);
        }
    }
    if let Some(f) = top.get("stringData") {
        for (key, value, field) in f.string_map(ctx)? {
            check_key(ctx, &field.path, field.line, &key)?;
            data.insert(key, value.as_bytes().to_vec());
        }
    }
    Ok(KubeSecret {
        name: name.to_owned(),
        data,
    })
}

/// A key is a file name in a secret volume: letters, digits, `-`, `_` and `.`, not `.` or
/// `..`.
fn check_key(ctx: &Ctx, path: &str, line: usize, key: &str) -> Result<(), KubeError> {
    let ok = !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ctx.err(
            line,
            path,
            "not a valid key: use letters, digits, '-', '_' and '.'",
        ))
    }
}
