import Foundation
import KeyCustody

/// `vault bench all --report DIR`: every figure of one run in `DIR/bench.json` (JSON numbers), `DIR/bench.md` (a
/// table) and `DIR/bench.svg`, a chart of each figure's distance to its target (1 = on target) that a reader takes
/// in at a glance. The SVG is written directly: a handful of rectangles and labels needs no plotting tool.
public struct BenchReport: Sendable {
    public var figures: [BenchFigure]
    /// What ran, for the chart's title (`vault bench all, 2026-12-07 17:02 UTC, 2 cores`).
    public var title: String

    public init(figures: [BenchFigure], title: String) {
        self.figures = figures
        self.title = title
    }

    public func write(to directory: String) throws {
        try FileBlobStore.makeDirectory(directory)
        try DurableFile.write(Array((json.text + "\n").utf8), to: "\(directory)/bench.json")
        try DurableFile.write(Array(markdown.utf8), to: "\(directory)/bench.md")
        try DurableFile.write(Array(svg.utf8), to: "\(directory)/bench.svg")
    }

    public var json: BenchJSON {
        .object(["title": .string(title), "figures": .array(figures.map(\.json)),
                 "met": .integer(Int64(figures.filter(\.met).count)), "total": .integer(Int64(figures.count))])
    }

    public var markdown: String {
        var lines = ["# \(title)", "", "| figure | measured | baseline | ratio | target | x target | |",
                     "|---|---|---|---|---|---|---|"]
        for figure in figures {
            let baseline = figure.baseline.map { "\(BenchFigure.format($0)) \(figure.unit) (\(figure.baselineTitle ?? ""))" }
            lines.append("| \(figure.title) | \(BenchFigure.format(figure.measured)) \(figure.unit) | \(baseline ?? "-") | "
                         + "\(figure.ratio.map { String(format: "%.2f", $0) } ?? "-") | \(figure.targetText) | "
                         + String(format: "%.2f", figure.score) + " | \(figure.met ? "met" : "missed") |")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Horizontal bars, one per figure, of its score on a scale from 0 to 2 (a score beyond 2 is drawn at 2 with an
    /// arrow), a line at 1 for the target; green when met, red when missed.
    public var svg: String {
        let labelWidth = 470.0, plotWidth = 400.0, rowHeight = 26.0, top = 50.0, scaleMax = 2.0
        let width = labelWidth + plotWidth + 130
        let height = top + rowHeight * Double(figures.count) + 40
        func x(_ score: Double) -> Double { labelWidth + plotWidth * min(max(score, 0), scaleMax) / scaleMax }
        func escape(_ text: String) -> String {
            text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
                .replacingOccurrences(of: ">", with: "&gt;")
        }
        func f(_ value: Double) -> String { String(format: "%.1f", value) }
        var parts = [
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(f(width))\" height=\"\(f(height))\" "
                + "font-family=\"sans-serif\" font-size=\"12\">",
            "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>",
            "<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">\(escape(title))</text>",
            "<text x=\"10\" y=\"40\" fill=\"#555\">each figure against its target (1 = on target; right of the line "
                + "is better)</text>",
        ]
        for tick in stride(from: 0.0, through: scaleMax, by: 0.5) {
            parts.append("<line x1=\"\(f(x(tick)))\" y1=\"\(f(top - 4))\" x2=\"\(f(x(tick)))\" "
                         + "y2=\"\(f(height - 36))\" stroke=\"\(tick == 1 ? "#000" : "#ddd")\" "
                         + "stroke-width=\"\(tick == 1 ? 2 : 1)\"/>")
            parts.append("<text x=\"\(f(x(tick)))\" y=\"\(f(height - 20))\" text-anchor=\"middle\" fill=\"#555\">"
                         + (tick == 1 ? "target" : String(format: "%.1f", tick)) + "</text>")
        }
        for (index, figure) in figures.enumerated() {
            let y = top + rowHeight * Double(index)
            let score = figure.score.isFinite ? figure.score : scaleMax
            parts.append("<text x=\"\(f(labelWidth - 8))\" y=\"\(f(y + 16))\" text-anchor=\"end\">"
                         + "\(escape(figure.title))</text>")
            parts.append("<rect x=\"\(f(labelWidth))\" y=\"\(f(y + 5))\" width=\"\(f(max(1, x(score) - labelWidth)))\" "
                         + "height=\"\(f(rowHeight - 10))\" fill=\"\(figure.met ? "#2e8b57" : "#c0392b")\"/>")
            let text = String(format: "%.2f x", figure.score) + (score > scaleMax ? " >" : "")
                + " (\(BenchFigure.format(figure.measured)) \(figure.unit))"
            parts.append("<text x=\"\(f(x(score) + 6))\" y=\"\(f(y + 16))\">\(escape(text))</text>")
        }
        parts.append("</svg>")
        return parts.joined(separator: "\n") + "\n"
    }
}
