//! Benchmark tables: printed side by side, and written into `docs/BENCHMARKS.md` between
//! `<!-- NAME:begin -->` and `<!-- NAME:end -->` so each benchmark owns its own section.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

/// One row: a metric, the baseline and Nexus values, their ratio, the target and the cells of
/// the table's extra columns.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub metric: String,
    pub baseline: String,
    pub nexus: String,
    pub ratio: String,
    pub target: String,
    pub extra: Vec<String>,
}

/// A benchmark's results. The target column is shown when some row has a target; the extra
/// columns (`extra_columns`, headings) follow it.
#[derive(Debug, Default)]
pub struct Table {
    pub name: &'static str,
    pub title: String,
    pub command: String,
    pub notes: Vec<String>,
    pub rows: Vec<Row>,
    pub extra_columns: Vec<String>,
    /// Headings of the baseline and nexus columns when they compare something else (two VMMs).
    pub sides: Option<(&'static str, &'static str)>,
}

const HEADINGS: [&str; 4] = ["metric", "baseline", "nexus", "nexus / baseline"];
const TARGET: &str = "target";

impl Table {
    fn has_target(&self) -> bool {
        self.rows.iter().any(|row| !row.target.is_empty())
    }

    /// Whether any row has a baseline or a ratio: a table of Nexus figures alone (the soak)
    /// has neither column.
    fn compares(&self) -> bool {
        self.rows.iter().any(|row| !row.baseline.is_empty() || !row.ratio.is_empty())
    }

    /// Drops the baseline and ratio columns (1 and 3) of a table that compares nothing.
    fn shown<T>(&self, columns: Vec<T>) -> Vec<T> {
        let compares = self.compares();
        let keep = |i: usize| compares || (i != 1 && i != 3);
        columns.into_iter().enumerate().filter(|(i, _)| keep(*i)).map(|(_, c)| c).collect()
    }

    fn headings(&self) -> Vec<String> {
        let target = self.has_target().then_some(TARGET);
        let extra = self.extra_columns.iter().map(String::as_str);
        let mut headings: Vec<String> =
            HEADINGS.into_iter().chain(target).chain(extra).map(str::to_owned).collect();
        if let Some((baseline, nexus)) = self.sides {
            headings[1] = baseline.into();
            headings[2] = nexus.into();
            headings[3] = format!("{nexus} / {baseline}");
        }
        self.shown(headings)
    }

    /// A row's cells, one per heading (missing extra cells are empty).
    fn cells<'a>(&'a self, row: &'a Row) -> Vec<&'a str> {
        let target = self.has_target().then_some(row.target.as_str());
        let extra =
            (0..self.extra_columns.len()).map(|i| row.extra.get(i).map_or("", String::as_str));
        self.shown(
            [&row.metric, &row.baseline, &row.nexus, &row.ratio]
                .map(String::as_str)
                .into_iter()
                .chain(target)
                .chain(extra)
                .collect(),
        )
    }

    /// The table as aligned text for the terminal.
    pub fn text(&self) -> String {
        let headings = self.headings();
        let mut widths: Vec<usize> = headings.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(self.cells(row)) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[&str]| {
            let mut out = String::new();
            for (cell, &w) in cells.iter().zip(&widths) {
                let _ = write!(out, "{cell:<w$}  ");
            }
            out.trim_end().to_owned() + "\n"
        };
        let mut out = format!("{}\n\n", self.title);
        out += &line(&headings.iter().map(String::as_str).collect::<Vec<_>>());
        let rules: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out += &line(&rules.iter().map(String::as_str).collect::<Vec<_>>());
        for row in &self.rows {
            out += &line(&self.cells(row));
        }
        for note in &self.notes {
            out += &format!("\n{note}");
        }
        out + "\n"
    }

    /// The table as a Markdown section.
    pub fn markdown(&self) -> String {
        let mut out = format!("### {}\n\nCommand: `{}`\n\n", self.title, self.command);
        let headings = self.headings();
        out += &format!("| {} |\n|{}\n", headings.join(" | "), "---|".repeat(headings.len()));
        for row in &self.rows {
            out += &format!("| {} |\n", self.cells(row).join(" | "));
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

/// The change from `b` to `a` as a signed percentage ("−35 %", "+37 %"), or "—".
pub fn change(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        let percent = (a / b - 1.0) * 100.0;
        let sign = if percent.round() < 0.0 { "−" } else { "+" };
        format!("{sign}{:.0} %", percent.abs())
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
        table.rows.push(Row {
            metric: "m".into(),
            nexus: "1".into(),
            target: "t".into(),
            ..Row::default()
        });
        table.write_section(&file).unwrap();
        table.rows[0].nexus = "2".into();
        table.write_section(&file).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("# Benchmarks\n\nintro\n"));
        assert_eq!(text.matches("<!-- fabric:begin -->").count(), 1);
        // Nothing is compared: no baseline or ratio column.
        assert!(text.contains("| metric | nexus | target |\n"));
        assert!(text.contains("| m | 2 | t |"));
        table.rows.push(Row { metric: "n".into(), baseline: "3".into(), ..Row::default() });
        let compared = table.markdown();
        assert!(compared.contains("| metric | baseline | nexus | nexus / baseline | target |\n"));
        assert!(compared.contains("| m |  | 2 |  | t |"));
    }

    #[test]
    fn extra_columns_follow_and_an_empty_target_column_is_left_out() {
        let mut table = Table {
            name: "x",
            title: "T".into(),
            extra_columns: vec!["paper".into(), "goal".into()],
            ..Table::default()
        };
        table.rows.push(Row {
            metric: "cpu".into(),
            baseline: "2".into(),
            nexus: "1".into(),
            ratio: "0.50×".into(),
            extra: vec!["−44 %".into()],
            ..Row::default()
        });
        let markdown = table.markdown();
        assert!(
            markdown.contains("| metric | baseline | nexus | nexus / baseline | paper | goal |")
        );
        assert!(markdown.contains("|---|---|---|---|---|---|\n"));
        assert!(markdown.contains("| cpu | 2 | 1 | 0.50× | −44 % |  |"));
        let text = table.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[2], "metric  baseline  nexus  nexus / baseline  paper  goal");
        assert_eq!(lines[4], "cpu     2         1      0.50×             −44 %");
    }

    #[test]
    fn units() {
        assert_eq!(seconds(0.000_000_5), "500 ns");
        assert_eq!(seconds(0.0015), "1.50 ms");
        assert_eq!(ratio(1.0, 4.0), "0.25×");
        assert_eq!(ratio(1.0, 0.0), "—");
        assert_eq!(change(65.0, 100.0), "−35 %");
        assert_eq!(change(137.0, 100.0), "+37 %");
        assert_eq!(change(100.2, 100.0), "+0 %");
        assert_eq!(change(1.0, 0.0), "—");
    }
}
