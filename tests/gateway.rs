//! End-to-end tests: the real `mcplex` binary over real sockets, with `mcplex-demo` as its stdio
//! child. Each test starts its own gateway on an OS-chosen port, so tests run in parallel.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Streamable HTTP as a client sees it (MCP spec, basic/transports).
mod streamable_http {
    use super::*;

    #[test]
    fn initialize_gives_a_session_id_and_server_info() {
        let gw = Gateway::demo("");
        let id = next_id();
        let r = send_once(gw.port, &mcp_post(None, &initialize_body(&id)));
        assert_status(&r, 200);
        let sid = r.header("mcp-session-id").expect("Mcp-Session-Id header");
        assert!(
            sid.len() >= 32 && sid.bytes().all(|b| b.is_ascii_hexdigit()),
            "session id should be at least 32 hex chars: {sid:?}"
        );
        let msg = r.rpc(&id);
        let result = assert_rpc_ok(&msg);
        assert_eq!(result["protocolVersion"], VERSION, "{msg}");
        assert!(result["serverInfo"]["name"].is_string(), "{msg}");
        assert!(result["capabilities"]["tools"].is_object(), "{msg}");

        // Two sessions never share an id.
        let other = gw.session();
        assert_ne!(other.id, sid);
    }

    #[test]
    fn tools_list_and_call() {
        let gw = Gateway::demo("");
        let s = gw.session();
        let list = s.call("tools/list", json!({}));
        let tools = assert_rpc_ok(&list)["tools"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
        for want in ["echo", "add", "slow", "fail"] {
            assert!(names.contains(&want), "tools/list lacks {want}: {names:?}");
        }
        assert_eq!(
            tool_text(&s.tool("echo", json!({"message": "hello, gateway"}))),
            "hello, gateway"
        );
        assert_eq!(tool_text(&s.tool("add", json!({"a": 2, "b": 40}))), "42");
        let fail = s.tool("fail", json!({}));
        assert_eq!(assert_rpc_ok(&fail)["isError"], true, "{fail}");

        let read = s.call("resources/read", json!({"uri": "demo://readme"}));
        let text = assert_rpc_ok(&read)["contents"][0]["text"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(text.contains("mcplex-demo"), "{read}");
        let prompt = s.call(
            "prompts/get",
            json!({"name": "greet", "arguments": {"name": "Ada"}}),
        );
        assert!(
            assert_rpc_ok(&prompt).to_string().contains("Ada"),
            "{prompt}"
        );
    }

    #[test]
    fn ping_is_answered() {
        let gw = Gateway::demo("");
        let s = gw.session();
        assert_eq!(assert_rpc_ok(&s.call("ping", json!({}))), &json!({}));
    }

    #[test]
    fn batch_post_answers_every_request() {
        let gw = Gateway::demo("");
        let s = gw.session();
        let (a, b) = (next_id(), next_id());
        let body = json!([
            {"jsonrpc": "2.0", "id": a, "method": "ping"},
            {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"},
            {"jsonrpc": "2.0", "id": b, "method": "tools/call",
             "params": {"name": "echo", "arguments": {"message": "in a batch"}}},
        ]);
        let r = s.post(&body.to_string());
        assert_status(&r, 200);
        let msgs = r.messages();
        assert_eq!(msgs.len(), 2, "two requests, two answers: {msgs:?}");
        assert_rpc_ok(&r.rpc(&a));
        assert_eq!(tool_text(&r.rpc(&b)), "in a batch");
    }

    #[test]
    fn notification_gets_202() {
        let gw = Gateway::demo("");
        let s = gw.session();
        let r = s.notify("notifications/roots/list_changed", json!({}));
        assert_status(&r, 202);
        assert!(r.body.is_empty(), "202 with a body: {:?}", r.text());
        s.assert_works();
    }

    #[test]
    fn get_opens_one_sse_stream_per_session() {
        let gw = Gateway::demo("");
        let s = gw.session();
        let get = |accept: &str| {
            request(
                "GET",
                "/mcp",
                &[
                    ("Accept", accept),
                    ("Mcp-Session-Id", &s.id),
                    ("MCP-Protocol-Version", VERSION),
                ],
                b"",
            )
        };
        let mut first = gw.connect();
        first.send(&get("text/event-stream")).expect("send GET");
        let head = first.read_head().expect("GET stream head");
        assert_eq!(head.status, 200, "{head:?}");
        assert!(
            head.content_type().starts_with("text/event-stream"),
            "{head:?}"
        );

        // A second stream for the same session is refused while the first is open.
        let second = send_once(gw.port, &get("text/event-stream"));
        assert_status(&second, 409);

        // The session keeps working with a stream open.
        s.assert_works();

        // Once the first stream is gone, a new one is allowed again.
        drop(first);
        let mut again = None;
        assert!(
            wait_until(Duration::from_secs(3), || {
                let mut c = gw.connect();
                let ok = c.send(&get("text/event-stream")).is_ok()
                    && c.read_head().map(|h| h.status == 200).unwrap_or(false);
                if ok {
                    again = Some(c);
                }
                ok
            }),
            "the GET stream slot was not released after the client closed it"
        );
    }

    #[test]
    fn get_without_event_stream_accept_is_406() {
        let gw = Gateway::demo("");
        let s = gw.session();
        let req = request(
            "GET",
            "/mcp",
            &[
                ("Accept", "application/json"),
                ("Mcp-Session-Id", &s.id),
                ("MCP-Protocol-Version", VERSION),
            ],
            b"",
        );
        assert_status(&send_once(gw.port, &req), 406);
    }

    #[test]
    fn delete_ends_the_session() {
        let gw = Gateway::demo("");
        let s = gw.session();
        let children_before = gw.children().len();
        let del = request(
            "DELETE",
            "/mcp",
            &[("Mcp-Session-Id", &s.id), ("MCP-Protocol-Version", VERSION)],
            b"",
        );
        assert_status(&send_once(gw.port, &del), 200);

        let id = next_id();
        let r = s.post(&rpc_request(&id, "ping", json!({})));
        assert_status(&r, 404);
        assert_status(&send_once(gw.port, &del), 404);
        // The session's child goes away with it.
        assert!(
            wait_until(Duration::from_secs(5), || gw.children().len()
                < children_before),
            "the session's child is still running after DELETE: {:?}",
            gw.children()
        );
    }

    #[test]
    fn request_without_session_id_is_400() {
        let gw = Gateway::demo("");
        let _s = gw.session();
        let id = next_id();
        let r = send_once(
            gw.port,
            &mcp_post(None, &rpc_request(&id, "tools/list", json!({}))),
        );
        assert_status(&r, 400);
    }

    #[test]
    fn unknown_session_is_404() {
        let gw = Gateway::demo("");
        let _s = gw.session();
        let id = next_id();
        let bogus = "0123456789abcdef0123456789abcdef";
        let r = send_once(
            gw.port,
            &mcp_post(Some(bogus), &rpc_request(&id, "tools/list", json!({}))),
        );
        assert_status(&r, 404);
    }

    #[test]
    fn unsupported_protocol_version_header_is_400() {
        // Only an unsupported revision is refused: the gateway deliberately tolerates a supported
        // one that differs from the negotiated revision (the conformance suite sends those).
        let gw = Gateway::demo("");
        let s = gw.session();
        for bad in ["1999-01-01", "not-a-version"] {
            let id = next_id();
            let req = request(
                "POST",
                "/mcp",
                &[
                    POST_HEADERS[0],
                    POST_HEADERS[1],
                    ("Mcp-Session-Id", &s.id),
                    ("MCP-Protocol-Version", bad),
                ],
                rpc_request(&id, "ping", json!({})).as_bytes(),
            );
            assert_status(&send_once(gw.port, &req), 400);
        }
        s.assert_works();
    }

    #[test]
    fn progress_arrives_on_the_post_stream_then_the_result() {
        let gw = Gateway::demo("");
        let s = gw.session();
        let id = next_id();
        let token = "client-token-7";
        let body = rpc_request(
            &id,
            "tools/call",
            json!({"name": "slow", "arguments": {"steps": 4, "delayMs": 250}, "_meta": {"progressToken": token}}),
        );
        let mut c = gw.connect();
        let start = Instant::now();
        c.send(&s.post_bytes(&body)).expect("send");
        let head = c.read_head().expect("head");
        assert_eq!(head.status, 200, "{head:?}");
        assert!(
            head.content_type().starts_with("text/event-stream"),
            "progress needs SSE: {head:?}"
        );

        let mut progress = Vec::new();
        let result = loop {
            let ev = c
                .next_event(&head)
                .expect("read SSE event")
                .expect("stream ended before the result");
            let m = ev.json();
            if m["method"] == "notifications/progress" {
                if progress.is_empty() {
                    // Streamed as it happens, not buffered until the end (4 x 250 ms).
                    let t = start.elapsed();
                    assert!(
                        t < Duration::from_millis(900),
                        "first progress came after {t:?}"
                    );
                }
                assert_eq!(
                    m["params"]["progressToken"], token,
                    "progress with a foreign token: {m}"
                );
                progress.push(m["params"]["progress"].as_f64().unwrap_or(-1.0));
            } else {
                break m;
            }
        };
        assert_eq!(progress, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(result["id"], id);
        assert_eq!(tool_text(&result), "done after 4 steps");
        // The stream ends after the answer.
        assert!(c.next_event(&head).expect("end of stream").is_none());
    }

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        let gw = Gateway::demo("");
        let s = gw.session();
        let ids: Vec<Value> = (0..3).map(|_| next_id()).collect();
        let mut bytes = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let body = rpc_request(
                id,
                "tools/call",
                json!({"name": "echo", "arguments": {"message": format!("p{i}")}}),
            );
            bytes.extend_from_slice(&s.post_bytes(&body));
        }
        let mut c = gw.connect();
        c.send(&bytes).expect("send pipelined");
        for (i, id) in ids.iter().enumerate() {
            let r = c
                .read_response()
                .unwrap_or_else(|e| panic!("response {i}: {e}"));
            assert_status(&r, 200);
            assert_eq!(tool_text(&r.rpc(id)), format!("p{i}"));
        }
    }

    #[test]
    fn http10_client_gets_a_close_delimited_stream() {
        let gw = Gateway::demo("");
        let s = gw.session();
        let id = next_id();
        let body = rpc_request(
            &id,
            "tools/call",
            json!({"name": "slow", "arguments": {"steps": 2, "delayMs": 10}, "_meta": {"progressToken": 5}}),
        );
        let mut req = s.post_bytes(&body);
        // Same request, spoken as HTTP/1.0: no chunked framing allowed in the answer.
        let line_end = req.windows(2).position(|w| w == b"\r\n").unwrap_or(0);
        req.splice(line_end - 3..line_end, b"1.0".iter().copied());
        let r = send_once(gw.port, &req);
        assert_status(&r, 200);
        assert!(
            !r.head.is_chunked(),
            "chunked answer to HTTP/1.0: {:?}",
            r.head
        );
        let msgs = r.messages();
        let progress = msgs
            .iter()
            .filter(|m| m["method"] == "notifications/progress")
            .count();
        assert_eq!(progress, 2, "{msgs:?}");
        assert_eq!(progress_tokens(&msgs), vec![json!(5), json!(5)]);
        assert_eq!(tool_text(&r.rpc(&id)), "done after 2 steps");
    }

    fn progress_tokens(msgs: &[Value]) -> Vec<Value> {
        msgs.iter()
            .filter(|m| m["method"] == "notifications/progress")
            .map(|m| m["params"]["progressToken"].clone())
            .collect()
    }

    #[test]
    fn unsupported_method_is_405() {
        let gw = Gateway::demo("");
        let r = send_once(gw.port, &request("PUT", "/mcp", &[], b"x"));
        assert_status(&r, 405);
        assert!(
            r.header("allow").is_some_and(|a| a.contains("POST")),
            "{:?}",
            r.head
        );
    }

    #[test]
    fn expect_100_continue_is_honoured() {
        // curl sends `Expect: 100-continue` for large bodies and waits up to 1 s for it.
        let gw = Gateway::demo("");
        let s = gw.session();
        let id = next_id();
        let body = rpc_request(&id, "ping", json!({}));
        let mut head = s.post_bytes(&body);
        head.truncate(head.len() - body.len() - 2);
        head.extend_from_slice(b"Expect: 100-continue\r\n\r\n");
        let mut c = gw.connect();
        c.send(&head).expect("send head");
        c.set_timeout(Duration::from_millis(800));
        let interim = c.read_head();
        c.set_timeout(IO_TIMEOUT);
        match interim {
            Ok(h) => assert_eq!(h.status, 100, "{h:?}"),
            Err(e) => panic!("no 100 Continue within 800 ms ({e})"),
        }
        c.send(body.as_bytes()).expect("send body");
        let r = c.read_response().expect("final response");
        assert_rpc_ok(&r.rpc(&id));
    }

    #[test]
    fn keep_alive_connection_is_reused() {
        let gw = Gateway::demo("");
        let s = gw.session();
        let mut c = gw.connect();
        for i in 0..5 {
            let id = next_id();
            let body = rpc_request(
                &id,
                "tools/call",
                json!({"name": "echo", "arguments": {"message": i.to_string()}}),
            );
            let r = c
                .roundtrip(&s.post_bytes(&body))
                .unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_status(&r, 200);
            assert!(
                !r.head.closes(),
                "keep-alive connection closed: {:?}",
                r.head
            );
            assert_eq!(tool_text(&r.rpc(&id)), i.to_string());
        }
        // Notifications and errors do not end the connection either.
        let r = c
            .roundtrip(
                &s.post_bytes(r#"{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}"#),
            )
            .expect("notification");
        assert_status(&r, 202);
        let r = c.roundtrip(&s.post_bytes("{oops")).expect("parse error");
        assert_status(&r, 400);
        let id = next_id();
        let r = c
            .roundtrip(&s.post_bytes(&rpc_request(&id, "ping", json!({}))))
            .expect("ping");
        assert_rpc_ok(&r.rpc(&id));
    }
}

/// What happens to a call when the client goes away or changes its mind.
mod cancellation {
    use super::*;

    /// Starts `slow` with progress on its own connection and waits for the first progress
    /// event, so the call is known to be running upstream.
    fn start_slow(gw: &Gateway, s: &Session, id: &Value) -> (Client, Head) {
        let body = rpc_request(
            id,
            "tools/call",
            json!({"name": "slow", "arguments": {"steps": 100, "delayMs": 100}, "_meta": {"progressToken": "t"}}),
        );
        let mut c = gw.connect();
        c.send(&s.post_bytes(&body)).expect("send slow call");
        let head = c.read_head().expect("head");
        assert_eq!(head.status, 200, "{head:?}");
        let first = c
            .next_event(&head)
            .expect("event")
            .expect("a progress event");
        assert_eq!(first.json()["method"], "notifications/progress");
        (c, head)
    }

    #[test]
    fn cancelled_request_ends_its_stream_without_an_answer() {
        let gw = Gateway::demo("");
        let s = gw.session();
        let id = next_id();
        let (mut c, head) = start_slow(&gw, &s, &id);
        let n = s.notify(
            "notifications/cancelled",
            json!({"requestId": id, "reason": "changed my mind"}),
        );
        assert_status(&n, 202);
        let start = Instant::now();
        c.set_timeout(Duration::from_secs(3));
        while let Some(ev) = c
            .next_event(&head)
            .expect("stream ends after the cancellation")
        {
            let m = ev.json();
            assert!(
                m.get("result").is_none(),
                "a cancelled request was answered: {m}"
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "stream ended after {:?}",
            start.elapsed()
        );
        s.assert_works();
    }

    #[test]
    fn client_disconnect_mid_call_leaves_the_session_usable() {
        let gw = Gateway::demo("");
        let s = gw.session();
        for _ in 0..3 {
            let (c, _) = start_slow(&gw, &s, &next_id());
            drop(c);
        }
        s.assert_works();
        // The target is free again: a fresh slow call completes.
        let r = s.tool("slow", json!({"steps": 2, "delayMs": 10}));
        assert_eq!(tool_text(&r), "done after 2 steps");
    }
}

/// Hostile or broken clients: each case runs while another client's session stays usable.
mod bad_input {
    use super::*;

    /// A gateway with a witness session; after `case`, the witness must still work and the
    /// gateway must still be running.
    fn with_witness(extra: &str, case: impl FnOnce(&Gateway, &Session)) {
        let mut gw = Gateway::demo(extra);
        let witness = gw.session();
        witness.assert_works();
        case(&gw, &witness);
        gw.assert_alive();
        witness.assert_works();
        // And a brand-new client is served as well.
        gw.session().assert_works();
    }

    #[test]
    fn malformed_json_is_a_parse_error() {
        with_witness("", |gw, w| {
            let r = send_once(
                gw.port,
                &mcp_post(Some(&w.id), r#"{"jsonrpc": "2.0", "id": 1, "#),
            );
            assert_status(&r, 400);
            assert_rpc_error(&r.json(), Some(-32700));
        });
    }

    #[test]
    fn wrong_content_type_is_415() {
        with_witness("", |gw, w| {
            let req = request(
                "POST",
                "/mcp",
                &[
                    ("Content-Type", "text/plain"),
                    POST_HEADERS[1],
                    ("Mcp-Session-Id", &w.id),
                ],
                br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            );
            assert_status(&send_once(gw.port, &req), 415);
        });
    }

    #[test]
    fn missing_accept_is_406() {
        with_witness("", |gw, w| {
            let req = request(
                "POST",
                "/mcp",
                &[POST_HEADERS[0], ("Mcp-Session-Id", &w.id)],
                br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            );
            assert_status(&send_once(gw.port, &req), 406);
        });
    }

    #[test]
    fn a_mebibyte_of_headers_is_refused() {
        with_witness("", |gw, _| {
            let mut c = gw.connect();
            let mut req = b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nX-Big: ".to_vec();
            req.resize(req.len() + 1024 * 1024, b'a');
            req.extend_from_slice(b"\r\n\r\n");
            // The gateway may answer and close before it has read everything: a failed write
            // or a reset is an acceptable refusal too.
            let _ = c.send(&req);
            match c.read_response() {
                Ok(r) => assert_status(&r, 431),
                Err(e) => eprintln!("connection closed instead of 431 ({e}): accepted"),
            }
        });
    }

    #[test]
    fn too_many_headers_are_refused() {
        with_witness("", |gw, _| {
            let mut c = gw.connect();
            let mut req = b"GET /mcp HTTP/1.1\r\nHost: localhost\r\n".to_vec();
            for i in 0..500 {
                req.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
            }
            req.extend_from_slice(b"\r\n");
            let _ = c.send(&req);
            match c.read_response() {
                Ok(r) => assert_status(&r, 431),
                Err(e) => eprintln!("connection closed instead of 431 ({e}): accepted"),
            }
        });
    }

    #[test]
    fn body_over_the_limit_is_413() {
        with_witness("config: {maxBodyBytes: 1000}", |gw, w| {
            let big = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"pad":"{}"}}}}"#,
                "x".repeat(5000)
            );
            let r = send_once(gw.port, &w.post_bytes(&big));
            assert_status(&r, 413);

            // The same with chunked framing, where the size is only known while decoding.
            let mut chunked = Vec::new();
            for piece in big.as_bytes().chunks(700) {
                chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                chunked.extend_from_slice(piece);
                chunked.extend_from_slice(b"\r\n");
            }
            chunked.extend_from_slice(b"0\r\n\r\n");
            let req = request(
                "POST",
                "/mcp",
                &[
                    POST_HEADERS[0],
                    POST_HEADERS[1],
                    ("Mcp-Session-Id", &w.id),
                    ("Transfer-Encoding", "chunked"),
                ],
                &chunked,
            );
            assert_status(&send_once(gw.port, &req), 413);

            // A body under the limit still goes through.
            let id = next_id();
            assert_rpc_ok(&w.post(&rpc_request(&id, "ping", json!({}))).rpc(&id));
        });
    }

    #[test]
    fn chunked_body_is_accepted() {
        with_witness("", |gw, w| {
            let id = next_id();
            let body = rpc_request(
                &id,
                "tools/call",
                json!({"name": "echo", "arguments": {"message": "chunky"}}),
            );
            let (a, b) = body.as_bytes().split_at(body.len() / 2);
            let mut framed = Vec::new();
            for piece in [a, b] {
                framed.extend_from_slice(format!("{:x};ext=1\r\n", piece.len()).as_bytes());
                framed.extend_from_slice(piece);
                framed.extend_from_slice(b"\r\n");
            }
            framed.extend_from_slice(b"0\r\n\r\n");
            let req = request(
                "POST",
                "/mcp",
                &[
                    POST_HEADERS[0],
                    POST_HEADERS[1],
                    ("Mcp-Session-Id", &w.id),
                    ("MCP-Protocol-Version", VERSION),
                    ("Transfer-Encoding", "chunked"),
                ],
                &framed,
            );
            let r = send_once(gw.port, &req);
            assert_status(&r, 200);
            assert_eq!(tool_text(&r.rpc(&id)), "chunky");
        });
    }

    #[test]
    fn truncated_chunked_body_then_close() {
        with_witness("", |gw, w| {
            let mut c = gw.connect();
            let head = request(
                "POST",
                "/mcp",
                &[
                    POST_HEADERS[0],
                    POST_HEADERS[1],
                    ("Mcp-Session-Id", &w.id),
                    ("Transfer-Encoding", "chunked"),
                ],
                b"",
            );
            c.send(&head).expect("send head");
            c.send(b"40\r\n{\"jsonrpc\":\"2.0\",\"id\":1,")
                .expect("send part of a chunk");
            c.shutdown_write();
            // Whatever the gateway answers, it must close this connection and keep running.
            assert!(
                c.closed_within(Duration::from_secs(5)).is_ok(),
                "connection left open"
            );
        });
    }

    #[test]
    fn stalled_request_is_closed_after_the_header_timeout() {
        with_witness("config: {headerTimeout: 1s}", |gw, w| {
            let mut c = gw.connect();
            let start = Instant::now();
            c.send(b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n")
                .expect("send half a head");
            // The witness is served while the slow client stalls.
            w.assert_works();
            let got = c.closed_within(Duration::from_secs(5));
            let waited = start.elapsed();
            let bytes = got.unwrap_or_else(|b| {
                panic!(
                    "stalled connection still open after 5 s (got {:?})",
                    String::from_utf8_lossy(&b)
                )
            });
            assert!(
                waited >= Duration::from_millis(900),
                "closed too early, after {waited:?}"
            );
            if !bytes.is_empty() {
                let text = String::from_utf8_lossy(&bytes);
                assert!(
                    text.starts_with("HTTP/1.1 408"),
                    "unexpected answer {text:?}"
                );
            }

            // The same for a body that never finishes.
            let mut c = gw.connect();
            let start = Instant::now();
            c.send(&request(
                "POST",
                "/mcp",
                &[POST_HEADERS[0], POST_HEADERS[1], ("Content-Length", "100")],
                b"{",
            ))
            .expect("send head and a byte");
            assert!(
                c.closed_within(Duration::from_secs(5)).is_ok(),
                "stalled body kept open"
            );
            assert!(start.elapsed() >= Duration::from_millis(900));
        });
    }

    #[test]
    fn content_length_with_transfer_encoding_is_400() {
        with_witness("", |gw, w| {
            let req = request(
                "POST",
                "/mcp",
                &[
                    POST_HEADERS[0],
                    POST_HEADERS[1],
                    ("Mcp-Session-Id", &w.id),
                    ("Content-Length", "5"),
                    ("Transfer-Encoding", "chunked"),
                ],
                b"0\r\n\r\n",
            );
            assert_status(&send_once(gw.port, &req), 400);
        });
    }

    #[test]
    fn duplicate_content_length_is_400() {
        with_witness("", |gw, w| {
            let body = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
            let n = body.len().to_string();
            let req = request(
                "POST",
                "/mcp",
                &[
                    POST_HEADERS[0],
                    POST_HEADERS[1],
                    ("Mcp-Session-Id", &w.id),
                    ("Content-Length", &n),
                    ("Content-Length", &n),
                ],
                body,
            );
            assert_status(&send_once(gw.port, &req), 400);
        });
    }

    #[test]
    fn invalid_json_rpc_is_invalid_request() {
        with_witness("", |gw, w| {
            let r = send_once(gw.port, &w.post_bytes(r#"{"jsonrpc":"1.0"}"#));
            let msgs = r.messages();
            assert_eq!(msgs.len(), 1, "{msgs:?}");
            assert_rpc_error(&msgs[0], Some(-32600));

            let r = send_once(
                gw.port,
                &w.post_bytes(r#"{"jsonrpc":"2.0","id":{"x":1},"method":"ping"}"#),
            );
            assert_rpc_error(&r.messages()[0], Some(-32600));

            // In a batch, the invalid entry gets its error and the valid one its answer.
            let id = next_id();
            let batch = format!(
                r#"[{{"jsonrpc":"1.0","id":"bad"}}, {}]"#,
                rpc_request(&id, "ping", json!({}))
            );
            let r = send_once(gw.port, &w.post_bytes(&batch));
            assert_status(&r, 200);
            assert_rpc_ok(&r.rpc(&id));
            let errors: Vec<Value> = r
                .messages()
                .into_iter()
                .filter(|m| m.get("error").is_some())
                .collect();
            assert_eq!(errors.len(), 1, "{:?}", r.text());
            assert_rpc_error(&errors[0], Some(-32600));
        });
    }

    #[test]
    fn garbage_bytes_are_400() {
        with_witness("", |gw, _| {
            let mut c = gw.connect();
            c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
                .expect("send");
            let r = c.read_response().expect("an answer to garbage");
            assert_status(&r, 400);
            assert!(
                c.closed_within(Duration::from_secs(3)).is_ok(),
                "connection kept open after garbage"
            );
        });
    }

    #[test]
    fn foreign_host_is_403() {
        with_witness("", |gw, w| {
            let req = request(
                "POST",
                "/mcp",
                &[
                    ("Host", "evil.example.com"),
                    POST_HEADERS[0],
                    POST_HEADERS[1],
                    ("Mcp-Session-Id", &w.id),
                ],
                br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            );
            assert_status(&send_once(gw.port, &req), 403);
            let req = request(
                "POST",
                "/mcp",
                &[
                    ("Origin", "https://evil.example.com"),
                    POST_HEADERS[0],
                    POST_HEADERS[1],
                ],
                initialize_body(&next_id()).as_bytes(),
            );
            assert_status(&send_once(gw.port, &req), 403);
        });
    }
}

/// A target that dies or never starts.
mod child_faults {
    use super::*;

    #[test]
    fn killed_child_fails_its_session_only() {
        let gw = Gateway::demo("");
        let a = gw.session();
        let a_children = gw.children();
        assert_eq!(a_children.len(), 1, "one child per session: {a_children:?}");
        let victim = a_children[0];
        let b = gw.session();

        // A long call in session A; wait for its first progress so it is really running.
        let id = next_id();
        let body = rpc_request(
            &id,
            "tools/call",
            json!({"name": "slow", "arguments": {"steps": 100, "delayMs": 100}, "_meta": {"progressToken": "p"}}),
        );
        let mut c = gw.connect();
        c.send(&a.post_bytes(&body)).expect("send slow call");
        let head = c.read_head().expect("head");
        assert_eq!(head.status, 200, "{head:?}");
        let first = c
            .next_event(&head)
            .expect("event")
            .expect("a progress event");
        assert_eq!(first.json()["method"], "notifications/progress");

        kill(victim, "KILL");
        let killed = Instant::now();
        c.set_timeout(Duration::from_secs(3));
        let answer = loop {
            let ev = c
                .next_event(&head)
                .expect("read after the kill")
                .expect("the stream ended without an answer for the pending call");
            let m = ev.json();
            if m.get("id") == Some(&id) {
                break m;
            }
        };
        assert!(
            killed.elapsed() < Duration::from_millis(1500),
            "error came after {:?}",
            killed.elapsed()
        );
        let why = assert_rpc_error(&answer, None);
        assert!(
            why.contains("demo"),
            "the error should name the target: {why}"
        );

        // Later calls in A fail too, quickly.
        let later = a.tool("echo", json!({"message": "x"}));
        assert_rpc_error(&later, None);
        // B is untouched.
        b.assert_works();
        // The killed child is reaped: no zombie left among the gateway's children.
        let gw_pid = gw.pid;
        assert!(
            wait_until(Duration::from_secs(3), || children_of(gw_pid)
                .iter()
                .all(|&p| p != victim && proc_state(p) != Some('Z'))),
            "zombie or leftover children: {:?}",
            children_of(gw_pid)
                .iter()
                .map(|&p| (p, proc_state(p)))
                .collect::<Vec<_>>()
        );
        b.assert_works();
        gw.session().assert_works();
    }

    #[test]
    fn missing_command_fails_initialize_with_a_reason() {
        let cmd = "/nonexistent/mcplex-no-such-server";
        let gw = Gateway::start(&stdio_config("", cmd));
        let id = next_id();
        let r = send_once(gw.port, &mcp_post(None, &initialize_body(&id)));
        let msg = r.rpc(&id);
        let why = assert_rpc_error(&msg, None);
        assert!(
            why.contains("demo"),
            "the error should name the target: {why}"
        );
        assert!(
            why.contains(cmd),
            "the error should name the command: {why}"
        );
        assert!(
            r.header("mcp-session-id").is_none(),
            "a failed initialize gave a session: {:?}",
            r.head
        );
    }

    #[test]
    fn validate_reports_every_error_with_its_path() {
        let dir = TempDir::new();
        let bad = dir.write(
            "bad.yaml",
            "mcp:\n  port: 99999\n  bogus: 1\n  targets:\n  - name: bad_name\n    stdio: {args: []}\n",
        );
        let (code, out, err) = run_with_timeout(
            std::process::Command::new(gateway_bin())
                .arg("-f")
                .arg(&bad)
                .arg("--validate"),
            Duration::from_secs(10),
        );
        assert_eq!(code, Some(1), "stdout {out:?} stderr {err:?}");
        for want in [
            "mcp.port",
            "mcp.bogus",
            "mcp.targets[0].name",
            "mcp.targets[0].stdio.cmd",
        ] {
            assert!(err.contains(want), "{want} missing from:\n{err}");
        }

        let good = dir.write("good.yaml", &demo_config(""));
        let (code, out, err) = run_with_timeout(
            std::process::Command::new(gateway_bin())
                .arg("-f")
                .arg(&good)
                .arg("--validate"),
            Duration::from_secs(10),
        );
        assert_eq!(code, Some(0), "stdout {out:?} stderr {err:?}");
    }
}

mod signals {
    use super::*;

    #[test]
    fn sigterm_exits_cleanly_and_stops_children() {
        let mut gw = Gateway::demo("");
        let s = gw.session();
        s.assert_works();
        // An open GET stream and a call in flight must not hold the shutdown up.
        let (_stream, _) = gw.open_get(&s);
        let mut slow = gw.connect();
        let id = next_id();
        slow.send(&s.post_bytes(&rpc_request(
            &id,
            "tools/call",
            json!({"name": "slow", "arguments": {"steps": 100, "delayMs": 100}}),
        )))
        .expect("send slow");
        std::thread::sleep(Duration::from_millis(200));

        let children = gw.children();
        assert!(!children.is_empty(), "no child before SIGTERM");
        gw.signal("TERM");
        let status = gw.wait_exit(Duration::from_secs(2));
        let status = status
            .unwrap_or_else(|| panic!("still running 2 s after SIGTERM; log:\n{}", gw.log_text()));
        assert!(
            status.success(),
            "exit status {status}; log:\n{}",
            gw.log_text()
        );
        for pid in children {
            assert!(
                wait_until(Duration::from_millis(500), || proc_state(pid).is_none()),
                "child {pid} survived the gateway (state {:?})",
                proc_state(pid)
            );
        }
    }
}
