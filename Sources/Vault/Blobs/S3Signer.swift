import KeyCustody

#if canImport(Glibc)
import Glibc
#endif

/// An S3 access key pair. The secret lives in wiped memory and is never printed (`description` is redacted).
public struct S3Credentials: Sendable, CustomStringConvertible {
    public let accessKeyID: String
    let secretAccessKey: SecureBytes

    public init(accessKeyID: String, secretAccessKey: SecureBytes) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
    }

    public var description: String { "S3Credentials(\(accessKeyID), secret redacted)" }
}

/// AWS Signature Version 4 for S3 requests (header authentication), with HMAC-SHA256 and SHA-256 from libcrypto.
///
/// Path-style requests are signed exactly as sent: the canonical URI is the encoded path, the canonical query string
/// the sorted, encoded parameters, and the signed headers are `host`, `x-amz-content-sha256`, `x-amz-date` and any
/// further `x-amz-*` or `range`/`content-*` header the request carries.
public struct S3Signer: Sendable {
    public let credentials: S3Credentials
    public let region: String
    public let service: String

    /// `x-amz-content-sha256` for a request whose body is not hashed.
    public static let unsignedPayload = "UNSIGNED-PAYLOAD"
    /// The SHA-256 of an empty body.
    public static let emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    public init(credentials: S3Credentials, region: String, service: String = "s3") {
        self.credentials = credentials
        self.region = region
        self.service = service
    }

    /// The headers to add to a request (`x-amz-date`, `x-amz-content-sha256`, `authorization`).
    /// `headers` are the request's other headers (including `host`); `query` its parameters, unencoded.
    public func sign(method: String, path: String, query: [(String, String)], headers: [(String, String)],
                     payloadHash: String, date: UnixTime) -> [(String, String)]
    {
        let (amzDate, day) = Self.timestamps(date)
        var all = headers.map { ($0.0.lowercased(), Self.trimmed($0.1)) }
        all.append(("x-amz-date", amzDate))
        all.append(("x-amz-content-sha256", payloadHash))
        let signed = all.filter { name, _ in
            name == "host" || name.hasPrefix("x-amz-") || name == "range" || name.hasPrefix("content-")
        }.sorted { $0.0 < $1.0 }
        let signedHeaders = signed.map(\.0).joined(separator: ";")
        let canonicalRequest = [
            method,
            Self.encodePath(path),
            Self.canonicalQuery(query),
            signed.map { "\($0.0):\($0.1)\n" }.joined(),
            signedHeaders,
            payloadHash,
        ].joined(separator: "\n")
        let scope = "\(day)/\(region)/\(service)/aws4_request"
        let stringToSign = [
            "AWS4-HMAC-SHA256", amzDate, scope,
            Hex.encode(Digest.hash(.sha256, Array(canonicalRequest.utf8))),
        ].joined(separator: "\n")
        let signature = Hex.encode(signingKey(day: day).withUnsafeBytes { key in
            Array(stringToSign.utf8).withUnsafeBytes { HMAC.authenticationCode(.sha256, key: key, message: $0) }
        })
        let authorization = "AWS4-HMAC-SHA256 Credential=\(credentials.accessKeyID)/\(scope), "
            + "SignedHeaders=\(signedHeaders), Signature=\(signature)"
        return [("x-amz-date", amzDate), ("x-amz-content-sha256", payloadHash), ("authorization", authorization)]
    }

    /// kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, day), region), service), "aws4_request"), in wiped memory.
    func signingKey(day: String) -> SecureBytes {
        var key: SecureBytes = credentials.secretAccessKey.withUnsafeBytes { secret in
            SecureBytes(count: 4 + secret.count) { out in
                out.copyBytes(from: Array("AWS4".utf8))
                UnsafeMutableRawBufferPointer(rebasing: out[4...]).copyMemory(from: secret)
            }
        }
        for step in [day, region, service, "aws4_request"] {
            var next = HMAC.authenticationCode(.sha256, key: key, message: Array(step.utf8))
            key = SecureBytes(consuming: &next)
        }
        return key
    }

    /// `20130524T000000Z` and `20130524` for a Unix time.
    static func timestamps(_ time: UnixTime) -> (String, String) {
        var seconds = time_t(time)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let day = "\(parts.tm_year + 1900)\(two(parts.tm_mon + 1))\(two(parts.tm_mday))"
        return ("\(day)T\(two(parts.tm_hour))\(two(parts.tm_min))\(two(parts.tm_sec))Z", day)
    }

    static func trimmed(_ value: String) -> String {
        value.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
    }

    /// RFC 3986 percent-encoding of everything but unreserved characters (and `/` in paths), as SigV4 requires.
    static func encode(_ value: String, keepSlash: Bool = false) -> String {
        PercentEncoding.encode(value, keepSlash: keepSlash)
    }

    static func encodePath(_ path: String) -> String { encode(path, keepSlash: true) }

    static func canonicalQuery(_ query: [(String, String)]) -> String {
        query.map { (encode($0.0), encode($0.1)) }
            .sorted { $0.0 == $1.0 ? $0.1 < $1.1 : $0.0 < $1.0 }
            .map { "\($0.0)=\($0.1)" }
            .joined(separator: "&")
    }
}
