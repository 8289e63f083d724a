//! Charts drawn as SVG on the server: no script, no third-party code.

use maud::{html, Markup};

/// Width and height of a chart's drawing area, in SVG units.
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 160.0;

/// A line chart of `series` (label, values over the same points): one
/// polyline per series, scaled to the largest value, with the largest value
/// marked on the axis.
pub fn lines(title: &str, points: usize, series: &[(&str, &str, Vec<f64>)]) -> Markup {
    let max = series
        .iter()
        .flat_map(|(_, _, values)| values.iter().copied())
        .fold(0.0_f64, f64::max);
    let scale = if max > 0.0 { HEIGHT / max } else { 0.0 };
    let step = if points > 1 {
        WIDTH / (points - 1) as f64
    } else {
        0.0
    };
    html! {
        figure.chart {
            figcaption { (title) }
            svg viewBox=(format!("0 0 {} {}", WIDTH + 60.0, HEIGHT + 20.0)) role="img" aria-label=(title) {
                line x1="0" y1=(HEIGHT) x2=(WIDTH) y2=(HEIGHT) stroke="#999" stroke-width="1" {}
                text x=(WIDTH + 6.0) y="12" font-size="11" fill="#555" { (format_value(max)) }
                text x=(WIDTH + 6.0) y=(HEIGHT) font-size="11" fill="#555" { "0" }
                @for (name, color, values) in series {
                    @let coordinates = values
                        .iter()
                        .enumerate()
                        .map(|(i, v)| format!("{:.1},{:.1}", i as f64 * step, HEIGHT - v * scale))
                        .collect::<Vec<_>>()
                        .join(" ");
                    @if values.len() == 1 {
                        circle cx="0" cy=(format!("{:.1}", HEIGHT - values[0] * scale)) r="3" fill=(color) {
                            title { (name) }
                        }
                    } @else {
                        polyline points=(coordinates) fill="none" stroke=(color) stroke-width="2" {
                            title { (name) }
                        }
                    }
                }
            }
            ul.legend {
                @for (name, color, _) in series {
                    li {
                        svg.swatch viewBox="0 0 10 10" width="10" height="10" aria-hidden="true" {
                            rect width="10" height="10" fill=(color) {}
                        }
                        " " (name)
                    }
                }
            }
        }
    }
}

/// A number as the axis shows it.
pub fn format_value(value: f64) -> String {
    if value >= 1_000_000.0 {
        format!("{:.1}M", value / 1_000_000.0)
    } else if value >= 1_000.0 {
        format!("{:.1}k", value / 1_000.0)
    } else if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_scale_to_the_largest() {
        let svg = lines("t", 3, &[("requests", "#1f6feb", vec![0.0, 50.0, 100.0])]).into_string();
        assert!(
            svg.contains(r#"points="0.0,160.0 320.0,80.0 640.0,0.0""#),
            "{svg}"
        );
        assert!(svg.contains(">100<"), "{svg}");
    }

    #[test]
    fn numbers_are_shortened() {
        assert_eq!(format_value(1_500.0), "1.5k");
        assert_eq!(format_value(2_000_000.0), "2.0M");
        assert_eq!(format_value(12.0), "12");
        assert_eq!(format_value(0.25), "0.25");
    }
}
