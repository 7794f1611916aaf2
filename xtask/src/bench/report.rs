//! Benchmark tables: printed side by side, and written into `docs/BENCHMARKS.md` between
//! `<!-- NAME:begin -->` and `<!-- NAME:end -->` so each benchmark owns its own section.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

/// One row: a metric, the baseline and Nexus values, their ratio and the target.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub metric: String,
    pub baseline: String,
    pub nexus: String,
    pub ratio: String,
    pub target: String,
}

/// A benchmark's results.
#[derive(Debug, Default)]
pub struct Table {
    pub name: &'static str,
    pub title: String,
    pub command: String,
    pub notes: Vec<String>,
    pub rows: Vec<Row>,
}

const HEADINGS: [&str; 5] = ["metric", "baseline", "nexus", "nexus / baseline", "target"];

impl Table {
    fn cells(row: &Row) -> [&str; 5] {
        [&row.metric, &row.baseline, &row.nexus, &row.ratio, &row.target]
    }

    /// The table as aligned text for the terminal.
    pub fn text(&self) -> String {
        let mut widths = HEADINGS.map(str::len);
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(Self::cells(row)) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: [&str; 5]| {
            let mut out = String::new();
            for (cell, w) in cells.iter().zip(widths) {
                let _ = write!(out, "{cell:<w$}  ");
            }
            out.trim_end().to_owned() + "\n"
        };
        let mut out = format!("{}\n\n", self.title);
        out += &line(HEADINGS);
        out += &line(widths.map(|w| "-".repeat(w)).each_ref().map(String::as_str));
        for row in &self.rows {
            out += &line(Self::cells(row));
        }
        for note in &self.notes {
            out += &format!("\n{note}");
        }
        out + "\n"
    }

    /// The table as a Markdown section.
    pub fn markdown(&self) -> String {
        let mut out = format!("### {}\n\nCommand: `{}`\n\n", self.title, self.command);
        out += &format!("| {} |\n|{}\n", HEADINGS.join(" | "), "---|".repeat(HEADINGS.len()));
        for row in &self.rows {
            out += &format!("| {} |\n", Self::cells(row).join(" | "));
        }
        for note in &self.notes {
            out += &format!("\n{note}\n");
        }
        out
    }

    /// Replaces (or appends) this table's section of `file`.
    pub fn write_section(&self, file: &Path) -> Result<()> {
        let old = std::fs::read_to_string(file).unwrap_or_else(|_| "# Benchmarks\n".into());
        let begin = format!("<!-- {}:begin -->", self.name);
        let end = format!("<!-- {}:end -->", self.name);
        let section = format!("{begin}\n{}{end}", self.markdown());
        let new = match (old.find(&begin), old.find(&end)) {
            (Some(b), Some(e)) if b < e => {
                format!("{}{section}{}", &old[..b], &old[e + end.len()..])
            }
            _ => format!("{}\n{section}\n", old.trim_end()),
        };
        std::fs::write(file, new).with_context(|| format!("write {}", file.display()))
    }
}

/// `a / b` as "0.42×", or "—" when undefined.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}×", a / b)
    } else {
        "—".into()
    }
}

/// Seconds in the most readable unit.
pub fn seconds(s: f64) -> String {
    match s {
        s if s < 1e-6 => format!("{:.0} ns", s * 1e9),
        s if s < 1e-3 => format!("{:.1} µs", s * 1e6),
        s if s < 1.0 => format!("{:.2} ms", s * 1e3),
        s => format!("{s:.2} s"),
    }
}

/// Bytes in MiB.
pub fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("B.md");
        std::fs::write(&file, "# Benchmarks\n\nintro\n").unwrap();
        let mut table =
            Table { name: "fabric", title: "T".into(), command: "c".into(), ..Table::default() };
        table.rows.push(Row { metric: "m".into(), nexus: "1".into(), ..Row::default() });
        table.write_section(&file).unwrap();
        table.rows[0].nexus = "2".into();
        table.write_section(&file).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("# Benchmarks\n\nintro\n"));
        assert_eq!(text.matches("<!-- fabric:begin -->").count(), 1);
        assert!(text.contains("| m |  | 2 |  |  |"));
        assert!(table.text().contains("m       1") || table.text().contains("m "));
    }

    #[test]
    fn units() {
        assert_eq!(seconds(0.000_000_5), "500 ns");
        assert_eq!(seconds(0.0015), "1.50 ms");
        assert_eq!(ratio(1.0, 4.0), "0.25×");
        assert_eq!(ratio(1.0, 0.0), "—");
    }
}
