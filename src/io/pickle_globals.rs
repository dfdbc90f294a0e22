//! The globals a torch checkpoint's pickle names, checked before anything is read from it:
//! only those `torch.load(weights_only=True)` accepts for a state dict (tensor and parameter
//! rebuilders, storage classes, `OrderedDict`, sizes, devices, dtypes) may appear. Nothing of
//! a pickle is ever executed here, but a file naming `os.system` or any other callable is not
//! a checkpoint and is refused, as torch refuses it.
//!
//! The pickle is walked opcode by opcode (protocols 0-5). `GLOBAL` names its module and name
//! inline; `STACK_GLOBAL`, `INST` and the extension-registry opcodes take them from
//! elsewhere, which `torch.save` (protocol 2) never writes, so they are refused outright.

use crate::error::{Error, Result};

/// Whether `module.name` may appear in a state dict's pickle.
fn allowed(module: &str, name: &str) -> bool {
    match module {
        "torch._utils" => matches!(
            name,
            "_rebuild_tensor_v2" | "_rebuild_parameter" | "_rebuild_parameter_with_state"
        ),
        "torch._tensor" => name == "_rebuild_from_type_v2",
        "torch" => {
            name.ends_with("Storage")
                || matches!(
                    name,
                    "Size"
                        | "device"
                        | "Tensor"
                        | "float32"
                        | "float16"
                        | "bfloat16"
                        | "float64"
                        | "int64"
                        | "int32"
                        | "int16"
                        | "int8"
                        | "uint8"
                        | "bool"
                )
        }
        "torch.nn.parameter" => name == "Parameter",
        "collections" => name == "OrderedDict",
        "_codecs" => name == "encode",
        "builtins" => matches!(name, "set" | "frozenset" | "bytearray" | "slice"),
        _ => false,
    }
}

/// Errors unless every global `pickle` names is allowed (`what` names the file in errors).
pub fn check(pickle: &[u8], what: &str) -> Result<()> {
    let bad = |m: String| Error::Format(format!("{what}: {m}"));
    let truncated = || bad("the pickle ends inside an opcode".into());
    let mut at = 0usize;
    // `n` bytes after the opcode.
    let take = |at: &mut usize, n: usize| -> Result<&[u8]> {
        let end = at
            .checked_add(n)
            .filter(|&e| e <= pickle.len())
            .ok_or_else(truncated)?;
        let s = &pickle[*at..end];
        *at = end;
        Ok(s)
    };
    let line = |at: &mut usize| -> Result<&[u8]> {
        let len = pickle[*at..]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(truncated)?;
        let s = &pickle[*at..*at + len];
        *at += len + 1;
        Ok(s)
    };
    let uint = |b: &[u8]| b.iter().rev().fold(0usize, |v, &x| (v << 8) | x as usize);
    while at < pickle.len() {
        let op = pickle[at];
        at += 1;
        match op {
            b'.' => return Ok(()),
            // GLOBAL: "module\nname\n".
            b'c' => {
                let module = String::from_utf8_lossy(line(&mut at)?).into_owned();
                let name = String::from_utf8_lossy(line(&mut at)?).into_owned();
                if !allowed(&module, &name) {
                    return Err(bad(format!(
                        "the pickle names `{module}.{name}`, which a checkpoint of tensors does not hold (refused, as torch.load(weights_only=True) refuses it)"
                    )));
                }
            }
            0x93 | b'i' | 0x82..=0x84 => {
                return Err(bad(format!(
                "the pickle takes a callable by opcode 0x{op:02x}, which torch.save does not write (refused)"
            )))
            }
            // No argument.
            b'('
            | b'0'
            | b'1'
            | b'2'
            | b'N'
            | b')'
            | b']'
            | b'}'
            | b'a'
            | b'e'
            | b's'
            | b'u'
            | b'b'
            | b'R'
            | b't'
            | b'l'
            | b'd'
            | b'o'
            | b'Q'
            | 0x81
            | 0x85..=0x89
            | 0x8f..=0x92
            | 0x94
            | 0x97
            | 0x98 => {}
            // Fixed-size arguments.
            b'K' | b'h' | b'q' | 0x80 => {
                take(&mut at, 1)?;
            }
            b'M' => {
                take(&mut at, 2)?;
            }
            b'J' | b'j' | b'r' => {
                take(&mut at, 4)?;
            }
            b'G' | 0x95 => {
                take(&mut at, 8)?;
            }
            // Length-prefixed arguments.
            b'U' | b'C' | 0x8c | 0x8a => {
                let n = uint(take(&mut at, 1)?);
                take(&mut at, n)?;
            }
            b'T' | b'B' | b'X' | 0x8b => {
                let n = uint(take(&mut at, 4)?);
                take(&mut at, n)?;
            }
            0x8e | 0x8d | 0x96 => {
                let n = uint(take(&mut at, 8)?);
                take(&mut at, n)?;
            }
            // Newline-terminated arguments.
            b'I' | b'L' | b'F' | b'S' | b'V' | b'P' | b'g' | b'p' => {
                line(&mut at)?;
            }
            other => return Err(bad(format!("unknown pickle opcode 0x{other:02x}"))),
        }
    }
    Err(truncated())
}

/// `check` on every `data.pkl` of a torch zip (only those entries are read).
pub fn check_torch_zip(file: impl std::io::Read + std::io::Seek, what: &str) -> Result<()> {
    let mut zip =
        zip::ZipArchive::new(file).map_err(|e| Error::Format(format!("{what}: not a torch zip ({e})")))?;
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| Error::Format(format!("{what}: {e}")))?;
        let name = entry.name().map_err(|e| Error::Format(format!("{what}: {e}")))?;
        if name.ends_with("data.pkl") {
            let mut pickle = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut pickle)
                .map_err(|e| Error::Format(format!("{what}: {e}")))?;
            check(&pickle, what)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_globals_pass_and_others_are_refused() {
        let ok = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nq\x00ccollections\nOrderedDict\n)R.";
        check(ok, "t").unwrap();
        let evil = b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00lsR.";
        assert!(check(evil, "t").unwrap_err().to_string().contains("posix.system"));
        let stack = b"\x80\x04\x8c\x02os\x8c\x06system\x93.";
        assert!(check(stack, "t").is_err());
        assert!(check(b"\x80\x02X\xff\xff\x00\x00ab", "t").is_err());
        assert!(check(b"\x80\x02", "t").is_err());
    }
}
