#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    assert!(policy_engine::fuzzing::lexer(data), "normalizing is not idempotent");
});
