//! A WASIp2 HTTP component: `/hello` greets, `/echo` streams the request body
//! back as it arrives, so the host must stream both directions.

// The bindings wit-bindgen generates (imports and the exported handler)
// are unsafe FFI; the code written here is not.
#![allow(unsafe_code)]

use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::StreamError;

wasip2::http::proxy::export!(HelloP2);

struct HelloP2;

impl wasip2::exports::http::incoming_handler::Guest for HelloP2 {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let resp = OutgoingResponse::new(Fields::new());
        let body = resp.body().expect("fresh response has a body");
        ResponseOutparam::set(response_out, Ok(resp));
        let out = body.write().expect("fresh body has a stream");

        if path.ends_with("/echo") {
            let incoming = request.consume().expect("request body");
            let input = incoming.stream().expect("request body stream");
            loop {
                match input.blocking_read(64 * 1024) {
                    Ok(chunk) => {
                        // WASI 0.2 caps one blocking write at 4096 bytes.
                        for piece in chunk.chunks(4096) {
                            out.blocking_write_and_flush(piece).expect("write echo");
                        }
                    }
                    Err(StreamError::Closed) => break,
                    Err(e) => panic!("reading request body: {e:?}"),
                }
            }
            drop(input);
            IncomingBody::finish(incoming);
        } else {
            out.blocking_write_and_flush(b"hello from wasi:http@0.2")
                .expect("write greeting");
        }
        drop(out);
        OutgoingBody::finish(body, None).expect("finish body");
    }
}
