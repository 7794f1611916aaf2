//! Plots as small hand-written SVG files (no plotting library): the distribution of measured
//! values as a CDF, one curve per series, and grouped horizontal bars.

use std::fmt::Write as _;

/// One curve or one colour of bars.
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    pub name: &'a str,
    pub values: &'a [f64],
}

/// Series colours, in order: the baseline grey, Nexus blue, then others.
const COLOURS: [&str; 4] = ["#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c"];
const WIDTH: f64 = 640.0;
const FONT: &str = r#"font-family="sans-serif" font-size="12""#;
/// The plot area starts below the title and the legend.
const TOP: f64 = 60.0;

/// The empirical CDF of each series' values (in `unit`), with the p50 and p99 levels marked.
pub fn cdf(title: &str, unit: &str, series: &[Series<'_>]) -> String {
    let (left, right, bottom, height) = (60.0, 20.0, 50.0, 400.0);
    let max = series.iter().flat_map(|s| s.values).copied().fold(0.0, f64::max);
    let x_max = nice_ceiling(max);
    let plot_w = WIDTH - left - right;
    let plot_h = height - TOP - bottom;
    let x = |v: f64| left + v / x_max * plot_w;
    let y = |p: f64| TOP + (1.0 - p) * plot_h;
    let mut svg = open(height, title);
    axes(&mut svg, (left, TOP, plot_w, plot_h), x_max, unit);
    for p in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" {FONT}>{p}</text>"#,
            left - 6.0,
            y(p) + 4.0
        );
    }
    for (p, label) in [(0.5, "p50"), (0.99, "p99")] {
        let _ = write!(
            svg,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#bbb" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" text-anchor="end" {FONT} fill="#777">{label}</text>"##,
            left + plot_w,
            left + plot_w - 4.0,
            y(p) - 3.0,
            y = y(p),
        );
    }
    for (i, s) in series.iter().enumerate() {
        let mut sorted = s.values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        let mut path = format!("M{:.1},{:.1}", x(0.0), y(0.0));
        for (k, v) in sorted.iter().enumerate() {
            let _ = write!(path, " H{:.1} V{:.1}", x(*v), y((k + 1) as f64 / n));
        }
        let colour = COLOURS[i % COLOURS.len()];
        let _ = write!(svg, r#"<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>"#);
    }
    legend(&mut svg, series, left);
    svg + "</svg>\n"
}

/// Horizontal bars: for each group (a label), one bar per series, its value (in `unit`) written
/// at its end. `series[k].values[g]` is series k's value in group g.
pub fn bars(title: &str, unit: &str, groups: &[&str], series: &[Series<'_>]) -> String {
    let (left, right, bottom, bar, gap) = (230.0, 70.0, 50.0, 16.0, 14.0);
    let group_h = bar * series.len() as f64 + gap;
    let plot_h = group_h * groups.len() as f64;
    let height = TOP + plot_h + bottom;
    let max = series.iter().flat_map(|s| s.values).copied().fold(0.0, f64::max);
    let x_max = nice_ceiling(max);
    let plot_w = WIDTH - left - right;
    let mut svg = open(height, title);
    axes(&mut svg, (left, TOP, plot_w, plot_h), x_max, unit);
    for (g, label) in groups.iter().enumerate() {
        let y0 = TOP + g as f64 * group_h + gap / 2.0;
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" {FONT}>{}</text>"#,
            left - 8.0,
            y0 + bar * series.len() as f64 / 2.0 + 4.0,
            escape(label)
        );
        for (k, s) in series.iter().enumerate() {
            let Some(&value) = s.values.get(g).filter(|v| v.is_finite()) else { continue };
            let w = value / x_max * plot_w;
            let y = y0 + k as f64 * bar;
            let _ = write!(
                svg,
                r#"<rect x="{left}" y="{y:.1}" width="{w:.1}" height="{:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" {FONT}>{value:.0}</text>"#,
                bar - 2.0,
                COLOURS[k % COLOURS.len()],
                left + w + 4.0,
                y + bar - 5.0,
            );
        }
    }
    legend(&mut svg, series, left);
    svg + "</svg>\n"
}

fn open(height: f64, title: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}"><rect width="100%" height="100%" fill="white"/><text x="{:.1}" y="22" text-anchor="middle" font-family="sans-serif" font-size="14" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    )
}

/// The frame, the x axis from 0 to `x_max` with five ticks and its unit.
fn axes(svg: &mut String, (left, top, w, h): (f64, f64, f64, f64), x_max: f64, unit: &str) {
    let _ = write!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#333"/>"##
    );
    for i in 0..=5 {
        let v = x_max * f64::from(i) / 5.0;
        let x = left + w * f64::from(i) / 5.0;
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="{b:.1}" x2="{x:.1}" y2="{:.1}" stroke="#333"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" {FONT}>{}</text>"##,
            top + h + 4.0,
            top + h + 18.0,
            number(v),
            b = top + h,
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" {FONT}>{}</text>"#,
        left + w / 2.0,
        top + h + 38.0,
        escape(unit)
    );
}

/// The series' colours and names in one row between the title and the plot, from `x`.
fn legend(svg: &mut String, series: &[Series<'_>], mut x: f64) {
    let y = TOP - 12.0;
    for (i, s) in series.iter().enumerate() {
        let _ = write!(
            svg,
            r#"<rect x="{x:.1}" y="{:.1}" width="14" height="10" fill="{}"/><text x="{:.1}" y="{y:.1}" {FONT}>{}</text>"#,
            y - 9.0,
            COLOURS[i % COLOURS.len()],
            x + 20.0,
            escape(s.name)
        );
        x += 40.0 + 7.0 * s.name.chars().count() as f64;
    }
}

/// The smallest of 1, 2, 2.5, 5 × 10^k that is at least `v` (1 for nothing to show).
fn nice_ceiling(v: f64) -> f64 {
    if !(v > 0.0 && v.is_finite()) {
        return 1.0;
    }
    let scale = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * scale).find(|c| *c >= v).unwrap_or(10.0 * scale)
}

/// A tick label: no trailing zeros.
fn number(v: f64) -> String {
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_limits_and_labels() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.3), 10.0);
        assert_eq!(nice_ceiling(180.0), 200.0);
        assert_eq!(nice_ceiling(220.0), 250.0);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
        assert_eq!(nice_ceiling(0.031), 0.05);
        assert_eq!(number(50.0), "50");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }

    #[test]
    fn a_cdf_has_one_step_per_value_and_a_legend() {
        let svg = cdf(
            "warm <latency>",
            "ms",
            &[
                Series { name: "baseline", values: &[30.0, 10.0, 20.0] },
                Series { name: "nexus", values: &[5.0] },
            ],
        );
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.ends_with("</svg>\n"));
        assert!(svg.contains("warm &lt;latency&gt;") && svg.contains(">baseline<"));
        assert_eq!(svg.matches("<path ").count(), 2);
        assert_eq!(svg.matches(" H").count(), 4);
        // The x axis ends at 50 (the nice ceiling of 30); the last step of the baseline reaches 1.
        assert!(svg.contains(">50</text>"));
        assert!(svg.contains(&format!("V{TOP:.1}\"")));
    }

    #[test]
    fn bars_skip_missing_values() {
        let svg = bars(
            "memory",
            "MiB",
            &["compress", "thumbnail"],
            &[
                Series { name: "baseline", values: &[300.0, 320.0] },
                Series { name: "nexus", values: &[250.0, f64::NAN] },
            ],
        );
        assert_eq!(svg.matches("height=\"14.0\"").count(), 3, "three bars: {svg}");
        assert!(svg.contains(">320</text>") && svg.contains(">thumbnail</text>"));
    }
}
