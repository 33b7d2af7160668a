import KeyCustody

/// The operations page's charts: bars per UTC day, drawn as SVG on the server (no script, no inline style: colours
/// are presentation attributes, which the console's Content-Security-Policy allows).
enum ConsoleCharts {
    /// Colours of the stacked series, in order.
    static let palette = ["#1f5fa8", "#c0392b", "#e08e0b", "#27856a", "#7d3c98", "#5d6d7e"]

    /// Uploads, reads (live and archive), refusals by reason and shreds per day over the `days` up to `today`.
    static func activity(_ activity: AuditActivity, days: Int, today: Int64) -> [[String: Any]] {
        let range = (today - Int64(days - 1))...today
        func series(_ counts: [AuditActivity.Count], where include: (String) -> Bool) -> [String: [Int64: Int64]] {
            var result: [String: [Int64: Int64]] = [:]
            for count in counts where include(count.name) && range.contains(count.day) {
                result[count.name, default: [:]][count.day, default: 0] += count.count
            }
            return result
        }
        let reads = series(activity.allowed) { $0 == "read" || $0 == "archive.read" }
        let charts: [(String, [String: [Int64: Int64]])] = [
            ("Uploads per day", series(activity.allowed) { $0 == "upload" }),
            ("Reads per day", ["live": reads["read"] ?? [:], "archive": reads["archive.read"] ?? [:]]
                .filter { !$0.value.isEmpty }),
            ("Refusals per day, by reason", series(activity.refusals) { _ in true }),
            ("Shreds per day", series(activity.allowed) { $0 == "shred" }),
        ]
        return charts.map { title, data in
            let total = data.values.reduce(0) { $0 + $1.values.reduce(0, +) }
            return ["title": title, "total": total, "svg": bars(title: title, series: data, days: range)]
        }
    }

    /// A stacked bar chart: one bar per day of `days`, one colour per series, a legend and the peak on the axis.
    static func bars(title: String, series: [String: [Int64: Int64]], days: ClosedRange<Int64>) -> String {
        let width = 560, height = 200, left = 40, bottom = 30, top = 10
        let names = series.keys.sorted()
        let dayList = Array(days)
        let totals = dayList.map { day in names.reduce(Int64(0)) { $0 + (series[$1]?[day] ?? 0) } }
        let peak = max(totals.max() ?? 0, 1)
        let plotHeight = height - bottom - top
        let slot = (width - left) / max(dayList.count, 1)
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 \(width) \(height + 20 * ((names.count + 2) / 3))\" "
            + "role=\"img\" aria-label=\"\(escape(title))\" class=\"chart\">"
        svg += "<line x1=\"\(left)\" y1=\"\(top + plotHeight)\" x2=\"\(width)\" y2=\"\(top + plotHeight)\" stroke=\"#888\"/>"
        svg += "<text x=\"\(left - 4)\" y=\"\(top + 10)\" text-anchor=\"end\" font-size=\"11\" fill=\"#333\">\(peak)</text>"
        svg += "<text x=\"\(left - 4)\" y=\"\(top + plotHeight)\" text-anchor=\"end\" font-size=\"11\" fill=\"#333\">0</text>"
        for (index, day) in dayList.enumerated() {
            var y = top + plotHeight
            let x = left + index * slot + 2
            for (colour, name) in names.enumerated() {
                let count = series[name]?[day] ?? 0
                guard count > 0 else { continue }
                let h = max(1, Int(Int64(plotHeight) * count / peak))
                y -= h
                svg += "<rect x=\"\(x)\" y=\"\(y)\" width=\"\(slot - 4)\" height=\"\(h)\" "
                    + "fill=\"\(palette[colour % palette.count])\"><title>\(escape(name)) "
                    + "\(date(day)): \(count)</title></rect>"
            }
            if index % 2 == 0 || dayList.count <= 7 {
                svg += "<text x=\"\(x + (slot - 4) / 2)\" y=\"\(height - bottom + 14)\" text-anchor=\"middle\" "
                    + "font-size=\"10\" fill=\"#333\">\(date(day).suffix(5))</text>"
            }
        }
        for (index, name) in names.enumerated() {
            let x = left + (index % 3) * 170, y = height + 20 * (index / 3) + 4
            svg += "<rect x=\"\(x)\" y=\"\(y)\" width=\"10\" height=\"10\" fill=\"\(palette[index % palette.count])\"/>"
            svg += "<text x=\"\(x + 14)\" y=\"\(y + 9)\" font-size=\"11\" fill=\"#333\">\(escape(name))</text>"
        }
        if names.isEmpty {
            svg += "<text x=\"\(left + 10)\" y=\"\(top + plotHeight / 2)\" font-size=\"12\" fill=\"#666\">"
                + "nothing in these days</text>"
        }
        return svg + "</svg>"
    }

    static func date(_ day: Int64) -> String { String(Timestamp.format(secondsSinceEpoch: Int(day * 86_400)).prefix(10)) }

    /// Text for SVG: the five XML specials escaped.
    static func escape(_ text: String) -> String {
        var out = ""
        for character in text {
            switch character {
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "&": out += "&amp;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(character)
            }
        }
        return out
    }
}
