//! Pod-spec YAML (`peapod pod apply`) on fuzzed text: parsing, the Kubernetes mapping and
//! validation must end in a document list or an error naming the problem, never a panic.
//! What parses must hold what validation promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peapod::pod::kube::parse_documents;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match parse_documents(&text) {
        Ok(docs) => {
            assert!(!docs.pods.is_empty() || !docs.secrets.is_empty());
            for pod in &docs.pods {
                assert!(
                    !pod.name.is_empty() && pod.name.len() <= 63,
                    "{:?}",
                    pod.name
                );
                assert!(
                    !pod.containers.is_empty(),
                    "pod {} has no containers",
                    pod.name
                );
            }
            let _ = format!("{docs:?}");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
