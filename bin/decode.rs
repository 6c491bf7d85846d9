//! `graphsync decode`: captured pgoutput streams to JSON lines.

use anyhow::Context;
use bytes::Bytes;
use pgoutput::{json, Decoder, Lsn};
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// Decodes every file in order with one decoder (relations carry over between files).
/// Malformed lines are reported on stderr with file and line number; decoding continues and the
/// exit code is 1 if any line failed.
pub fn run(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut decoder = Decoder::new();
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut failures = 0usize;
    for path in files {
        let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            Box::new(std::io::BufReader::new(f))
        };
        for (i, line) in reader.lines().enumerate() {
            let line = line.with_context(|| format!("cannot read {}", path.display()))?;
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            match decode_line(&mut decoder, line) {
                Ok(json) => {
                    out.write_all(json.as_bytes())?;
                    out.write_all(b"\n")?;
                }
                Err(e) => {
                    failures += 1;
                    out.flush()?;
                    eprintln!("{}:{}: {e}", path.display(), i + 1);
                }
            }
        }
    }
    out.flush()?;
    if failures > 0 {
        eprintln!("{failures} line(s) could not be decoded");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn decode_line(decoder: &mut Decoder, line: &str) -> Result<String, String> {
    let (lsn, hex) = line.split_once('|').ok_or("expected `LSN|HEX`")?;
    let lsn: Lsn = lsn.parse().map_err(|e| format!("{e}"))?;
    let hex = hex.trim().trim_start_matches("\\x");
    let data = Bytes::from(decode_hex(hex)?);
    let msg = decoder.decode(&data).map_err(|e| e.to_string())?;
    json::message_to_json(lsn, &msg, decoder.relations()).map_err(|e| e.to_string())
}

fn decode_hex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("hex data has odd length {}", s.len()));
    }
    s.as_bytes()
        .chunks(2)
        .enumerate()
        .map(|(i, p)| {
            let d = |c: u8| (c as char).to_digit(16);
            match (d(p[0]), d(p[1])) {
                (Some(h), Some(l)) => Ok((h * 16 + l) as u8),
                _ => Err(format!("invalid hex digit at position {}", i * 2)),
            }
        })
        .collect()
}
