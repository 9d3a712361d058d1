//! Kubernetes resource quantities (`500m`, `0.5`, `128Mi`, `1G`, `1e3`): a decimal number,
//! then at most one of a binary suffix (`Ki` .. `Ei`), a decimal suffix (`n`, `u`, `m`, `k`,
//! `M` .. `E`) or a decimal exponent (`e3`, `E-2`).

/// A non-negative quantity as `mantissa * 10^exp10 * 1024^pow1024`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quantity {
    mantissa: u128,
    exp10: i32,
    pow1024: u32,
}

/// What a quantity is, for messages.
pub(super) const FORMAT: &str = "a number with an optional suffix: m, k, M, G, T, Ki, Mi, Gi, Ti, \
                                or an exponent such as 1e3";

fn parse(text: &str) -> Option<Quantity> {
    let text = text.strip_prefix('+').unwrap_or(text);
    let number_len = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_len);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') || int.len() + frac.len() > 30 {
        return None;
    }
    let mut mantissa: u128 = 0;
    for d in int.bytes().chain(frac.bytes()) {
        mantissa = mantissa * 10 + u128::from(d - b'0');
    }
    let mut q = Quantity {
        mantissa,
        exp10: -(frac.len() as i32),
        pow1024: 0,
    };
    match suffix {
        "" => {}
        "Ki" => q.pow1024 = 1,
        "Mi" => q.pow1024 = 2,
        "Gi" => q.pow1024 = 3,
        "Ti" => q.pow1024 = 4,
        "Pi" => q.pow1024 = 5,
        "Ei" => q.pow1024 = 6,
        "n" => q.exp10 -= 9,
        "u" => q.exp10 -= 6,
        "m" => q.exp10 -= 3,
        "k" => q.exp10 += 3,
        "M" => q.exp10 += 6,
        "G" => q.exp10 += 9,
        "T" => q.exp10 += 12,
        "P" => q.exp10 += 15,
        "E" => q.exp10 += 18,
        _ => {
            let exp = suffix.strip_prefix(['e', 'E'])?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            q.exp10 += exp.parse::<i32>().ok()?;
        }
    }
    Some(q)
}

impl Quantity {
    /// The quantity in units of `10^unit_exp10`, rounded up (as Kubernetes rounds); `None`
    /// when it does not fit.
    fn ceil_units(self, unit_exp10: i32) -> Option<u64> {
        let mut n = self
            .mantissa
            .checked_mul(1024u128.checked_pow(self.pow1024)?)?;
        let shift = self.exp10 - unit_exp10;
        if shift >= 0 {
            n = n.checked_mul(10u128.checked_pow(shift as u32)?)?;
        } else {
            // Dividing by more than the mantissa can hold leaves 0 or a fraction: 1 if any.
            n = match 10u128.checked_pow(shift.unsigned_abs()) {
                Some(d) => n.div_ceil(d),
                None => u128::from(n > 0),
            };
        }
        u64::try_from(n).ok()
    }
}

/// A cpu quantity in millicores (`500m` → 500, `2` → 2000, `0.5` → 500).
pub fn cpu_millis(text: &str) -> Option<u64> {
    parse(text)?.ceil_units(-3)
}

/// A memory quantity in bytes (`128Mi`, `1G`, `1e3`, `512k`).
pub fn memory_bytes(text: &str) -> Option<u64> {
    parse(text)?.ceil_units(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        let cpu: &[(&str, Option<u64>)] = &[
            ("500m", Some(500)),
            ("2", Some(2000)),
            ("0.5", Some(500)),
            ("1.5", Some(1500)),
            (".25", Some(250)),
            ("100u", Some(1)),
            ("0", Some(0)),
            ("1e3", Some(1_000_000)),
            ("+1", Some(1000)),
            ("", None),
            ("m", None),
            ("-1", None),
            ("1.2.3", None),
            ("two", None),
            ("1 m", None),
            ("1e", None),
            ("1e99999", None),
        ];
        for (text, want) in cpu {
            assert_eq!(cpu_millis(text), *want, "cpu {text:?}");
        }
        let memory: &[(&str, Option<u64>)] = &[
            ("128Mi", Some(128 << 20)),
            ("1G", Some(1_000_000_000)),
            ("1e3", Some(1000)),
            ("1E3", Some(1000)),
            ("512k", Some(512_000)),
            ("1Ki", Some(1024)),
            ("1.5Gi", Some(3 << 29)),
            ("0.5Ki", Some(512)),
            ("100m", Some(1)),
            ("1E", Some(1_000_000_000_000_000_000)),
            ("12Gigs", None),
            ("12gi", None),
            ("1KiB", None),
            ("16Ei", None),
            ("1e3Mi", None),
            ("99999999999999999999999999999999", None),
        ];
        for (text, want) in memory {
            assert_eq!(memory_bytes(text), *want, "memory {text:?}");
        }
    }
}
