//! Hand-written SVG plots of an end-to-end run: throughput bars (median with min–max whiskers,
//! CPU per 1,000 queries under each bar) and latency percentile curves (HdrHistogram style:
//! x = percentile on a 1/(1-q) log scale, y = latency on a log scale). No plotting crate: the
//! figures are simple and the files stay small and diffable.

use std::fmt::Write as _;

const COLORS: [&str; 6] = [
    "#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860",
];

fn color(i: usize) -> &'static str {
    COLORS.get(i % COLORS.len()).copied().unwrap_or("#000")
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One bar: label, median, min, max, and a second line of text.
#[derive(Debug)]
pub struct Bar {
    pub label: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub note: String,
}

pub fn bars(title: &str, unit: &str, bars: &[Bar]) -> String {
    let (w, h, left, bottom, top) = (760.0, 420.0, 70.0, 80.0, 50.0);
    let plot_h = h - bottom - top;
    let ymax = bars.iter().map(|b| b.max).fold(1.0_f64, f64::max) * 1.1;
    let slot = (w - left - 20.0) / bars.len().max(1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{}</text>",
        w / 2.0,
        esc(title)
    );
    for i in 0..=5 {
        let v = ymax * f64::from(i) / 5.0;
        let y = h - bottom - plot_h * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>",
            w - 20.0,
            left - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"16\" y=\"{:.1}\" transform=\"rotate(-90 16 {:.1})\" text-anchor=\"middle\">{}</text>",
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        esc(unit)
    );
    for (i, b) in bars.iter().enumerate() {
        let x = left + slot * i as f64 + slot * 0.2;
        let bw = slot * 0.6;
        let y = |v: f64| h - bottom - plot_h * (v / ymax);
        let _ = writeln!(
            s,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"{}\"/>\n<line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>\n<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{:.0}</text>\n<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{}</text>",
            y(b.median),
            plot_h * (b.median / ymax),
            color(i),
            y(b.min),
            y(b.max),
            y(b.max) - 6.0,
            b.median,
            h - bottom + 18.0,
            esc(&b.label),
            h - bottom + 36.0,
            esc(&b.note),
            cx = x + bw / 2.0,
        );
    }
    s.push_str("</svg>\n");
    s
}

/// One latency curve: label and `(quantile, µs)` points.
#[derive(Debug)]
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

pub fn percentiles(title: &str, curves: &[Curve]) -> String {
    let (w, h, left, bottom, top, right) = (760.0, 440.0, 70.0, 60.0, 50.0, 180.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    // x: log10(1/(1-q)) from 0 (p0) to 4 (p99.99); y: log10(µs).
    let xs = |q: f64| (1.0 / (1.0 - q.min(0.9999))).log10() / 4.0 * pw + left;
    let all: Vec<f64> = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1))
        .filter(|v| *v > 0.0)
        .collect();
    let lo = all
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .max(1.0)
        .log10()
        .floor();
    let hi = all
        .iter()
        .copied()
        .fold(1.0_f64, f64::max)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let ys = |us: f64| h - bottom - (us.max(1.0).log10() - lo) / (hi - lo) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{}</text>",
        (w - right) / 2.0 + left / 2.0,
        esc(title)
    );
    for (q, label) in [
        (0.0, "p0"),
        (0.9, "p90"),
        (0.99, "p99"),
        (0.999, "p99.9"),
        (0.9999, "p99.99"),
    ] {
        let x = xs(q);
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{top}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
            h - bottom,
            h - bottom + 18.0
        );
    }
    let mut e = lo;
    while e <= hi {
        let y = ys(10f64.powf(e));
        let label = match e {
            e if e < 3.0 => format!("{:.0} µs", 10f64.powf(e)),
            e if e < 6.0 => format!("{:.0} ms", 10f64.powf(e - 3.0)),
            e => format!("{:.0} s", 10f64.powf(e - 6.0)),
        };
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
            w - right,
            left - 6.0,
            y + 4.0
        );
        e += 1.0;
    }
    for (i, c) in curves.iter().enumerate() {
        let pts: Vec<String> = c
            .points
            .iter()
            .filter(|(q, _)| *q <= 0.9999)
            .map(|(q, us)| format!("{:.1},{:.1}", xs(*q), ys(*us)))
            .collect();
        let ly = top + 16.0 * i as f64 + 10.0;
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{col}\" stroke-width=\"2\" points=\"{}\"/>\n<line x1=\"{}\" x2=\"{}\" y1=\"{ly:.1}\" y2=\"{ly:.1}\" stroke=\"{col}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{:.1}\">{}</text>",
            pts.join(" "),
            w - right + 10.0,
            w - right + 30.0,
            w - right + 36.0,
            ly + 4.0,
            esc(&c.label),
            col = color(i),
        );
    }
    s.push_str("</svg>\n");
    s
}
