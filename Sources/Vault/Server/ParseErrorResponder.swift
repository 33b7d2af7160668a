import HummingbirdCore
import NIOCore
import NIOHTTP1

/// Answers a request that NIO's HTTP/1.1 parser rejects (a malformed request line or header, an unknown method, an
/// oversized head, a broken chunked body) with the JSON error every other answer has (DESIGN section 8), instead of
/// the bare `400` with no body Hummingbird writes itself. It sits right after the request decoder, where it sees the
/// parser's error first and the HTTP/1 parts of every request and response:
/// - when every request received has been answered, it writes `400 malformed_request` as JSON at once; after
///   requests still to be answered (pipelined), once they are; either way it drops Hummingbird's own bare 400;
/// - inside the body of a request not answered yet, the error reaches the route through its body stream
///   (`ErrorMiddleware` answers `400 incomplete_request`); once that answer ends, nothing more is sent.
/// The error is always passed on, so Hummingbird ends the connection as before.
final class ParseErrorResponder: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private enum Failure { case none, answerWhenIdle, silentWhenIdle }

    /// Request heads received whose final response has not ended yet.
    private var unanswered = 0
    private var requestOpen = false
    private var responseOpen = false
    private var failure = Failure.none
    /// The parse error is answered (or the route answered it): whatever else is written is dropped.
    private var closedToWrites = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch Self.unwrapInboundIn(data) {
        case .head:
            requestOpen = true
            unanswered += 1
        case .body: break
        case .end: requestOpen = false
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if closedToWrites {
            // Hummingbird's own answer to the parse error, after ours (or after the route's).
            promise?.succeed()
            return
        }
        var ended = false
        switch Self.unwrapOutboundIn(data) {
        case .head(let head) where (100..<200).contains(head.status.code) && head.status != .switchingProtocols:
            break
        case .head: responseOpen = true
        case .body: break
        case .end:
            responseOpen = false
            unanswered = max(0, unanswered - 1)
            ended = true
        }
        context.write(data, promise: promise)
        if ended && unanswered == 0 {
            switch failure {
            case .none: break
            case .answerWhenIdle: answer(context: context)
            case .silentWhenIdle: closedToWrites = true
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let parserError = error as? HTTPParserError, failure == .none, !closedToWrites {
            self.parserError = "\(parserError)"
            if unanswered == 0 && !responseOpen {
                failure = .answerWhenIdle
                answer(context: context)
            } else if requestOpen {
                // Inside the body of a request not answered yet: the route's answer is the answer.
                failure = .silentWhenIdle
            } else {
                // After requests still to be answered (pipelined): once they are.
                failure = .answerWhenIdle
            }
        }
        context.fireErrorCaught(error)
    }

    private var parserError = ""

    private func answer(context: ChannelHandlerContext) {
        let description = HTTPErrorDescription(
            status: 400, code: "malformed_request",
            message: "the request is not valid HTTP/1.1 (\(parserError)); the connection is closed")
        var body = context.channel.allocator.buffer(capacity: 256)
        body.writeBytes(description.json.canonicalBytes() + [0x0A])
        let headers = HTTPHeaders([("Content-Type", "application/json"), ("Content-Length", String(body.readableBytes)),
                                   ("Connection", "close")])
        context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .badRequest,
                                                                 headers: headers))), promise: nil)
        context.write(Self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        context.writeAndFlush(Self.wrapOutboundOut(.end(nil)), promise: nil)
        closedToWrites = true
    }

    /// Put in Hummingbird's HTTP/1 pipeline (its additional channel handlers come after its own HTTP codec), it
    /// places a `ParseErrorResponder` right after the request decoder, and then only passes everything on.
    final class Installer: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = NIOAny

        func handlerAdded(context: ChannelHandlerContext) {
            let operations = context.pipeline.syncOperations
            guard let decoder = try? operations.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self) else {
                return
            }
            try? operations.addHandler(ParseErrorResponder(), position: .after(decoder))
        }
    }
}

extension HTTP1Channel.Configuration {
    /// HTTP/1 as vaultd and the custody service serve it: a request NIO's parser rejects is answered with the JSON
    /// error too (`ParseErrorResponder`).
    static var vault: HTTP1Channel.Configuration { .init(additionalChannelHandlers: [ParseErrorResponder.Installer()]) }
}
