import HTTPTypes
import Hummingbird
import KeyCustody
import Logging
import NIOCore
import NIOHTTP1

/// The console's session for one request: the session, its cookie and, for a post, the form (CSRF token checked).
struct ConsoleRequest: Sendable {
    let session: ConsoleSession
    let cookie: String
    let form: ConsoleForm?
}

/// The context of every signed-in console page: the principal, as for the API, and the session.
struct ConsoleContext: ChildRequestContext, ForcePathContext {
    typealias ParentContext = VaultRequestContext
    var coreContext: CoreRequestContextStorage
    let principal: Principal
    let requestID: String
    let console: ConsoleRequest

    init(context: VaultRequestContext) throws {
        guard let principal = context.principal, let console = context.console else {
            throw ConsoleSignInRequired(notice: "Sign in to continue.")
        }
        coreContext = context.coreContext
        self.principal = principal
        self.console = console
        requestID = context.requestID
    }

    /// The posted form (its CSRF token already checked).
    var form: ConsoleForm {
        get throws {
            guard let form = console.form else {
                throw APIError(status: .badRequest, code: "malformed_form", message: "this page takes a posted form")
            }
            return form
        }
    }
}

/// Thrown where a page needs a session and there is none (or it ended): the browser goes to the sign-in page.
struct ConsoleSignInRequired: Error {
    let notice: String
    /// A session the browser had has ended (as opposed to never having signed in).
    var ended = false
}

/// Every console answer: the security headers, and an error as a page with the API's message (status, code and
/// message exactly as the API would answer), never a stack trace or a blank page.
struct ConsolePageMiddleware: RouterMiddleware {
    typealias Context = VaultRequestContext
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        var response: Response
        do {
            response = try await next(request, context)
        } catch let signIn as ConsoleSignInRequired {
            if request.headers[.accept]?.contains("application/json") == true {
                // A page's background request (console.js): an answer it can act on, not the sign-in page (whose
                // new sign-in nonce would spoil a sign-in form open in another tab).
                response = VaultAPI.json(HTTPErrorDescription(status: 401, code: "unauthenticated",
                                                              message: signIn.notice).json, status: .unauthorized)
            } else {
                response = Console.redirect("/ui/sign-in?notice=" + (signIn.ended ? "ended" : "required"))
            }
            // A cookie of an ended session is of no more use: the browser forgets it.
            if Console.cookie(ConsoleSessions.cookie, in: request) != nil {
                response.headers.append(HTTPField(name: .setCookie,
                                                  value: Console.setCookie(ConsoleSessions.cookie, "", maxAge: 0)))
            }
        } catch {
            response = Self.errorPage(error, request: request, requestID: context.requestID, logger: logger, page: nil)
        }
        for field in Console.securityHeaders { response.headers[field.name] = field.value }
        return response
    }

    /// The page of an error: the API's status, code and message; with the session's header when signed in.
    static func errorPage(_ error: any Error, request: Request, requestID: String, logger: Logger,
                          page: ConsolePage?) -> Response
    {
        let described = ErrorMiddleware.apiError(error, request: request, requestID: requestID, logger: logger)
        let api = described as? APIError
            ?? APIError(status: described.status, code: "http_\(described.status.code)",
                        message: described.status.reasonPhrase)
        // A status made from a number alone has no phrase; NIO knows every standard one.
        let phrase = api.status.reasonPhrase.isEmpty
            ? HTTPResponseStatus(statusCode: api.status.code).reasonPhrase : api.status.reasonPhrase
        let values: [String: Any] = [
            "title": "\(api.status.code) \(phrase)", "status": api.status.code, "reason": phrase, "code": api.code,
            "message": api.message, "request_id": requestID,
        ]
        var response = page?.render("error", values, status: api.status, showNotice: false)
            ?? Console.html("error", values, status: api.status)
        for field in api.headers where field.name != .contentType { response.headers.append(field) }
        return response
    }
}

/// Opens the session of a signed-in page: the cookie's session must be live and its credential still hold; a post
/// must come from this console (Origin) and carry the session's CSRF token.
struct ConsoleSessionMiddleware: RouterMiddleware {
    typealias Context = VaultRequestContext
    let sessions: ConsoleSessions
    let authentication: AuthenticationMiddleware
    let engine: VaultEngine
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        guard let cookie = Console.cookie(ConsoleSessions.cookie, in: request) else {
            throw ConsoleSignInRequired(notice: "Sign in to continue.")
        }
        // A page's own background poll (console.js) does not keep the session from idling out.
        let poll = request.headers[HTTPField.Name("X-Console-Poll")!] != nil
        guard let session = sessions.session(cookie, touch: !poll) else {
            throw ConsoleSignInRequired(notice: "Your session ended. Sign in again.", ended: true)
        }
        guard let principal = try await authentication.principal(of: session, channel: context.channel) else {
            sessions.close(cookie)
            throw ConsoleSignInRequired(notice: "Your session ended: its credential no longer holds. Sign in again.",
                                        ended: true)
        }
        var form: ConsoleForm?
        if request.method == .post {
            try Console.checkOrigin(request)
            let posted = try await Console.form(request)
            guard Console.sameSecret(posted["csrf"] ?? "", session.csrf) else {
                throw APIError(status: .forbidden, code: "csrf_token_invalid",
                               message: "the form's CSRF token is missing or is not this session's: reload the page "
                                   + "and send the form again")
            }
            form = posted
        }
        var context = context
        context.principal = principal
        context.console = ConsoleRequest(session: session, cookie: cookie, form: form)
        do {
            return try await next(request, context)
        } catch let signIn as ConsoleSignInRequired {
            throw signIn
        } catch {
            // Signed in: the error page keeps the header (forces, sign-out), never another force's name.
            let page = ConsolePage(try ConsoleContext(context: context), sessions: sessions, engine: engine,
                                   title: "Error")
            return ConsolePageMiddleware.errorPage(error, request: request, requestID: context.requestID,
                                                   logger: logger, page: page)
        }
    }
}

enum ConsoleRoutes {
    /// The pre-session cookie of the sign-in form (double-submitted, so another site cannot sign a browser in).
    static let signInCookie = "__Host-vault_signin"

    static func register(on router: Router<VaultRequestContext>, engine: VaultEngine, sessions: ConsoleSessions,
                         authentication: AuthenticationMiddleware, logger: Logger)
    {
        let ui = router.group("ui").add(middleware: ConsolePageMiddleware(logger: logger))
        ui.get("static/console.css") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/css; charset=utf-8"],
                     body: .init(byteBuffer: ByteBuffer(bytes: PackageResources.console_css)))
        }
        ui.get("static/console.js") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/javascript; charset=utf-8"],
                     body: .init(byteBuffer: ByteBuffer(bytes: PackageResources.console_js)))
        }
        registerSignIn(on: ui, sessions: sessions, authentication: authentication)
        let pages = ui.group().add(middleware: ConsoleSessionMiddleware(
            sessions: sessions, authentication: authentication, engine: engine, logger: logger))
            .group(context: ConsoleContext.self)
        pages.post("sign-out") { _, context -> Response in
            sessions.close(context.console.cookie)
            return Console.redirect("/ui/sign-in?notice=signed-out", headers: [
                .setCookie: Console.setCookie(ConsoleSessions.cookie, "", maxAge: 0),
            ])
        }
        pages.get { _, context -> Response in
            ConsolePage(context, sessions: sessions, engine: engine, title: "Your forces").render("home", [:])
        }
        ConsolePages.register(on: pages, engine: engine, sessions: sessions)
        // Any other path under /ui/ is a page that does not exist: a 404 page, not the API's JSON.
        let missing: @Sendable (Request, VaultRequestContext) async throws -> Response = { _, _ in
            throw HTTPError(.notFound)
        }
        ui.get("**", use: missing)
        ui.post("**", use: missing)
    }

    private static func registerSignIn(on ui: RouterGroup<VaultRequestContext>, sessions: ConsoleSessions,
                                       authentication: AuthenticationMiddleware)
    {
        let notices = [
            "ended": "Your session ended. Sign in again.", "required": "Sign in to continue.",
            "signed-out": "You are signed out.",
        ]
        @Sendable func page(_ request: Request, context: VaultRequestContext, error: String? = nil,
                            status: HTTPResponse.Status = .ok) async -> Response
        {
            let nonce = Hex.encode(SecureRandom.bytes(count: 32))
            let certificate = try? await authentication.certificatePrincipal(of: context.channel)
            var values: [String: Any] = ["title": "Sign in", "signin_csrf": nonce]
            if let certificate { values["certificate_principal"] = certificate.id }
            if let error { values["error"] = error }
            if let notice = request.uri.queryParameters["notice"].flatMap({ notices[String($0)] }) {
                values["notice"] = notice
            }
            var response = Console.html("sign-in", values, status: status)
            response.headers[.setCookie] = Console.setCookie(signInCookie, nonce, maxAge: 600)
            return response
        }
        ui.get("sign-in") { request, context in await page(request, context: context) }
        /// Both sign-ins: same-origin, the double-submitted nonce, then the credential.
        @Sendable func signIn(_ request: Request, context: VaultRequestContext,
                              credential: (ConsoleForm) async throws -> (Principal, ConsoleSession.Credential))
            async throws -> Response
        {
            try Console.checkOrigin(request)
            let form = try await Console.form(request)
            guard let nonce = Console.cookie(signInCookie, in: request), nonce.utf8.count == 64,
                  Console.sameSecret(form["signin_csrf"] ?? "", nonce)
            else {
                throw APIError(status: .forbidden, code: "csrf_token_invalid",
                               message: "the sign-in form expired or was not sent from this console: reload it")
            }
            let principal: Principal
            let how: ConsoleSession.Credential
            do {
                (principal, how) = try await credential(form)
            } catch let error as APIError where error.status == .unauthorized {
                return await page(request, context: context, error: error.message, status: .unauthorized)
            }
            // A session this browser had before ends: one browser, one session.
            if let previous = Console.cookie(ConsoleSessions.cookie, in: request) { sessions.close(previous) }
            let cookie = try sessions.open(principal: principal.id, credential: how)
            var response = Console.redirect("/ui/")
            response.headers.append(HTTPField(name: .setCookie, value: Console.setCookie(
                ConsoleSessions.cookie, cookie, maxAge: ConsoleSessions.lifetime)))
            response.headers.append(HTTPField(name: .setCookie, value: Console.setCookie(signInCookie, "", maxAge: 0)))
            return response
        }
        ui.post("sign-in") { request, context -> Response in
            try await signIn(request, context: context) { form in
                var bytes = Array((form["token"] ?? "").trimmingCharacters(in: .whitespacesAndNewlines).utf8)
                guard let (principal, hash) = try await BearerAuthentication.principal(
                    token: SecureBytes(consuming: &bytes), catalog: authentication.catalog,
                    principals: authentication.principals)
                else {
                    throw APIError(status: .unauthorized, code: "invalid_token",
                                   message: "that token is not valid: it may be mistyped, expired or revoked")
                }
                return (principal, .token(hash: hash, id: String(hash.prefix(BearerToken.idLength))))
            }
        }
        ui.post("sign-in/certificate") { request, context -> Response in
            try await signIn(request, context: context) { _ in
                guard let principal = try await authentication.certificatePrincipal(of: context.channel) else {
                    throw APIError(status: .unauthorized, code: "unauthenticated",
                                   message: "this browser presented no client certificate")
                }
                return (principal, .certificate)
            }
        }
    }
}
