import Foundation
import HTTPTypes
import Hummingbird
import KeyCustody
import Mustache
import NIOCore

/// The browser console at `/ui/` (DESIGN section 8): server-rendered pages over the same engine, policy and audit as
/// the API, for custodians, DPOs and operators. This file holds what every page shares: the templates, the security
/// headers, form bodies and the conversion of the API's JSON documents into what a template reads.
public enum Console {
    /// The templates (`Console/Templates/*.mustache`, embedded at build time). Pages extend `layout` by inheritance.
    static let library: MustacheLibrary = {
        let sources: [String: [UInt8]] = [
            "layout": PackageResources.layout_mustache, "sign-in": PackageResources.sign_in_mustache,
            "home": PackageResources.home_mustache, "error": PackageResources.error_mustache,
            "overview": PackageResources.overview_mustache, "retrievals": PackageResources.retrievals_mustache,
            "use-cases": PackageResources.use_cases_mustache, "use-case-form": PackageResources.use_case_form_mustache,
            "keys": PackageResources.keys_mustache, "certificates": PackageResources.certificates_mustache,
            "certificate": PackageResources.certificate_mustache, "audit": PackageResources.audit_mustache,
            "ops": PackageResources.ops_mustache,
        ]
        var templates: [String: MustacheTemplate] = [:]
        for (name, bytes) in sources {
            // The templates are part of the program: one that does not parse is a build defect, caught by every test.
            templates[name] = try! MustacheTemplate(string: String(decoding: bytes, as: UTF8.self))
        }
        return MustacheLibrary(templates: templates)
    }()

    /// Sent with every console answer: no script but the console's own file, no framing, no inline style, forms only
    /// to the console itself, nothing cached, no referrer leaving the console (within it, browsers then send the page's Origin, which posts are checked against).
    static let securityHeaders: HTTPFields = [
        HTTPField.Name("Content-Security-Policy")!: "default-src 'none'; script-src 'self'; style-src 'self'; "
            + "img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        HTTPField.Name("X-Frame-Options")!: "DENY",
        HTTPField.Name("X-Content-Type-Options")!: "nosniff",
        HTTPField.Name("Referrer-Policy")!: "same-origin",
        HTTPField.Name("Cross-Origin-Opener-Policy")!: "same-origin",
        HTTPField.Name("Cross-Origin-Resource-Policy")!: "same-origin",
        .cacheControl: "no-store",
    ]

    /// An HTML page rendered from `template` with `values`.
    static func html(_ template: String, _ values: [String: Any], status: HTTPResponse.Status = .ok) -> Response {
        let text = library.render(values, withTemplate: template) ?? ""
        return Response(status: status, headers: [.contentType: "text/html; charset=utf-8"],
                        body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    /// A 303 to `location` (a console path), so that reloading the page it lands on does not post again.
    static func redirect(_ location: String, headers extra: HTTPFields = [:]) -> Response {
        var headers = extra
        headers[.location] = location
        return Response(status: .seeOther, headers: headers)
    }

    /// Whether a token sent in a form is the one expected, compared in constant time.
    static func sameSecret(_ sent: String, _ expected: String) -> Bool {
        let sent = Array(sent.utf8), expected = Array(expected.utf8)
        return sent.count == expected.count && sent.withUnsafeBytes { sent in
            expected.withUnsafeBytes { constantTimeEquals(sent, $0) }
        }
    }

    /// The value of cookie `name` in the request, if sent.
    static func cookie(_ name: String, in request: Request) -> String? {
        for header in request.headers[values: .cookie] {
            for part in header.split(separator: ";") {
                let pair = part.trimmingCharacters(in: .whitespaces)
                if pair.hasPrefix(name + "=") { return String(pair.dropFirst(name.count + 1)) }
            }
        }
        return nil
    }

    /// A `Set-Cookie` value for a console cookie: `Secure`, `HttpOnly`, `SameSite=Strict`, `Path=/`; `maxAge` 0
    /// deletes it.
    static func setCookie(_ name: String, _ value: String, maxAge: Int64) -> String {
        "\(name)=\(value); Max-Age=\(maxAge); Path=/; Secure; HttpOnly; SameSite=Strict"
    }

    /// A form body (`application/x-www-form-urlencoded`, at most 64 KiB) as its fields; a field sent twice keeps
    /// every value in order (`lists`), the last in `fields`.
    static func form(_ request: Request) async throws -> ConsoleForm {
        let contentType = request.headers[.contentType] ?? ""
        guard contentType.lowercased().hasPrefix("application/x-www-form-urlencoded") else {
            throw APIError(status: .unsupportedMediaType, code: "unsupported_media_type",
                           message: "console forms are sent as application/x-www-form-urlencoded")
        }
        let body = try await request.body.collect(upTo: 64 * 1024)
        return try ConsoleForm(urlEncoded: Array(buffer: body))
    }

    /// Refuses a post sent from another site: a browser names the page's origin in `Origin` (and `Sec-Fetch-Site`);
    /// a form on another origin is refused even before its CSRF token is looked at.
    static func checkOrigin(_ request: Request) throws {
        let host = request.head.authority ?? request.headers[HTTPField.Name("Host")!] ?? ""
        let origin = request.headers[HTTPField.Name("Origin")!]
        let site = request.headers[HTTPField.Name("Sec-Fetch-Site")!]
        if let site, site != "same-origin", site != "none" {
            throw APIError(status: .forbidden, code: "cross_site_request",
                           message: "the form was not sent from this console (the browser says it came from a "
                               + "\(site) page)")
        }
        if let origin, origin != "https://" + host {
            throw APIError(status: .forbidden, code: "cross_site_request",
                           message: "the form was not sent from this console (it came from \(origin.prefix(200)), "
                               + "not https://\(host.prefix(200)))")
        }
    }

    /// A JSON document of the API as a template reads it: objects as dictionaries (without null members, so a
    /// section on a missing member is skipped), arrays, strings, integers and booleans.
    static func values(_ json: JSONValue) -> Any {
        switch json {
        case .null: return ""
        case .bool(let value): return value
        case .integer(let value): return value
        case .string(let value): return value
        case .secret: return "(secret)"
        case .array(let items): return items.map(values)
        case .object(let members):
            var result: [String: Any] = [:]
            for (key, value) in members where value != .null { result[key] = values(value) }
            return result
        }
    }

    /// A time for people: `2026-12-07 14:03 UTC`, from the API's RFC 3339 form.
    static func humanTime(_ wire: String?) -> String {
        guard let wire, wire.count >= 16 else { return wire ?? "" }
        let date = wire.prefix(10)
        let time = wire.dropFirst(11).prefix(5)
        return "\(date) \(time) UTC"
    }

    static func humanTime(unixTime: UnixTime) -> String {
        humanTime(Timestamp.format(secondsSinceEpoch: Int(unixTime)))
    }

    /// A time as a `datetime-local` input shows it (`2026-12-07T14:03`, UTC).
    static func inputTime(_ time: UnixTime) -> String {
        String(Timestamp.format(secondsSinceEpoch: Int(time)).prefix(16))
    }

    /// A time typed into a form, as the API reads it: `2026-12-07T14:03` (a `datetime-local` input, taken as UTC)
    /// becomes `2026-12-07T14:03:00Z`; anything else goes on as typed, for the API's own check to name.
    static func wireTime(fromInput text: String) -> String {
        if text.count == 16, text.dropFirst(10).first == "T" { return text + ":00Z" }
        if text.count == 10, text.allSatisfy({ $0.isNumber || $0 == "-" }) { return text + "T00:00:00Z" }
        return text
    }

    /// A value for a URL query or a form body (every byte but unreserved ones percent-encoded).
    public static func queryEscape(_ text: String) -> String { PercentEncoding.encode(text) }

    /// A JSON document indented for reading (members in canonical order).
    static func pretty(_ json: JSONValue, indent: String = "") -> String {
        let inner = indent + "  "
        switch json {
        case .array(let items) where !items.isEmpty:
            return "[\n" + items.map { inner + pretty($0, indent: inner) }.joined(separator: ",\n") + "\n\(indent)]"
        case .object(let members) where !members.isEmpty:
            return "{\n" + members.keys.sorted().map { key in
                inner + JSONValue.string(key).canonicalString + ": " + pretty(members[key]!, indent: inner)
            }.joined(separator: ",\n") + "\n\(indent)}"
        default:
            return json.canonicalString
        }
    }

    /// A byte count for people.
    static func humanSize(_ bytes: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1024, unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
    }
}

/// A posted console form: its fields, each field's values in order.
public struct ConsoleForm: Sendable, Equatable {
    public private(set) var lists: [String: [String]] = [:]

    public subscript(_ name: String) -> String? { lists[name]?.last }

    /// The non-empty value of `name`, or an error naming the field.
    func require(_ name: String, label: String? = nil) throws -> String {
        guard let value = self[name]?.trimmingCharacters(in: .whitespacesAndNewlines), !value.isEmpty else {
            throw VaultError(.invalidParameter, "\(label ?? name) is required")
        }
        return value
    }

    /// Reads `a=1&b=x+y%21`: `+` is a space, `%XX` a byte; the whole must be UTF-8.
    public init(urlEncoded body: [UInt8]) throws {
        let malformed = APIError(status: .badRequest, code: "malformed_form", message: "the form body is not valid "
                                    + "application/x-www-form-urlencoded")
        for pair in body.split(separator: UInt8(ascii: "&"), omittingEmptySubsequences: true) {
            let parts = pair.split(separator: UInt8(ascii: "="), maxSplits: 1, omittingEmptySubsequences: false)
            guard let name = try Self.decode(parts[0]) else { throw malformed }
            guard let value = try Self.decode(parts.count > 1 ? parts[1] : []) else { throw malformed }
            lists[name, default: []].append(value)
        }
    }

    private static func decode(_ bytes: ArraySlice<UInt8>) throws -> String? {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var index = bytes.startIndex
        while index < bytes.endIndex {
            let byte = bytes[index]
            if byte == UInt8(ascii: "+") {
                out.append(UInt8(ascii: " "))
            } else if byte == UInt8(ascii: "%") {
                guard index + 2 < bytes.endIndex,
                      let high = hexValue(bytes[index + 1]), let low = hexValue(bytes[index + 2])
                else { return nil }
                out.append(high << 4 | low)
                index += 2
            } else {
                out.append(byte)
            }
            index += 1
        }
        return String(validating: out, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
