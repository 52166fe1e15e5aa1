//! The loss curve as a PNG: training loss per step and validation loss
//! where it was measured, read back from the metrics log (so a resumed
//! run draws its whole history).
//!
//! Labels need a font: DejaVu Sans (Debian's fonts-dejavu-core) or
//! `$TAILOR_PLOT_FONT`; without one the curve is drawn without text.

use crate::error::{io_error, Result, TrainError};
use plotters::prelude::*;
use std::path::Path;

/// Font files tried for the labels, in order.
const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Draws `metrics` (a metrics.jsonl) into `png`, 900×500.
pub fn loss_curve(metrics: &Path, png: &Path) -> Result<()> {
    let text = std::fs::read_to_string(metrics).map_err(io_error(metrics))?;
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let Some(step) = value.get("step").and_then(|s| s.as_f64()) else { continue };
        if let Some(loss) = value.get("loss").and_then(|l| l.as_f64()) {
            train.push((step, loss));
        }
        if let Some(loss) = value.get("eval_loss").and_then(|l| l.as_f64()) {
            eval.push((step, loss));
        }
    }
    let labelled = register_font();
    draw(&train, &eval, png, labelled)
        .map_err(|e| TrainError::Io { path: png.to_path_buf(), source: std::io::Error::other(e.to_string()) })
}

/// Registers a font for the labels; false when none is found.
fn register_font() -> bool {
    let candidates = std::env::var("TAILOR_PLOT_FONT").into_iter().chain(FONT_PATHS.iter().map(|p| p.to_string()));
    for path in candidates {
        if let Ok(bytes) = std::fs::read(&path) {
            // plotters keeps the font for the process: leak it once.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn draw(train: &[(f64, f64)], eval: &[(f64, f64)], png: &Path, labelled: bool) -> DrawResult {
    let root = BitMapBackend::new(png, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let all = train.iter().chain(eval);
    let last_step = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let top = all.map(|p| p.1).filter(|l| l.is_finite()).fold(0.1, f64::max) * 1.05;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if labelled {
        builder.caption("loss", ("sans-serif", 24)).x_label_area_size(40).y_label_area_size(60);
    }
    let mut chart = builder.build_cartesian_2d(0f64..last_step, 0f64..top)?;
    let mut mesh = chart.configure_mesh();
    if labelled {
        mesh.x_desc("step").y_desc("cross-entropy");
    } else {
        mesh.disable_x_mesh().disable_y_mesh().x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    let train_series = chart.draw_series(LineSeries::new(train.iter().copied(), BLUE.stroke_width(2)))?;
    if labelled {
        train_series.label("train").legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    }
    if !eval.is_empty() {
        chart.draw_series(eval.iter().map(|&p| Circle::new(p, 4, RED.filled())))?;
        let eval_series = chart.draw_series(LineSeries::new(eval.iter().copied(), RED.stroke_width(2)))?;
        if labelled {
            eval_series.label("validation").legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
        }
    }
    if labelled {
        chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw()?;
    }
    root.present()?;
    Ok(())
}
