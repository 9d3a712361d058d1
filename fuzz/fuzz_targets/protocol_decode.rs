//! The host<->agent frame decoder on arbitrary bytes: every message type the agent or the
//! host decodes, through both the buffer decoder and the stream reader. Neither may panic,
//! and whatever decodes must encode and decode back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peapod::protocol::{Request, Response, StreamHello, decode_frame, encode_frame, read_frame};

fn check<T>(data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(Some((msg, used))) = decode_frame::<T>(data) {
        assert!(used <= data.len());
        let again = encode_frame(&msg).expect("a decoded message encodes");
        let (back, _) = decode_frame::<T>(&again)
            .expect("its own encoding decodes")
            .expect("a whole frame");
        assert_eq!(back, msg);
    }
    let mut reader = data;
    let _ = read_frame::<_, T>(&mut reader);
}

fuzz_target!(|data: &[u8]| {
    check::<Request>(data);
    check::<Response>(data);
    check::<StreamHello>(data);
});
