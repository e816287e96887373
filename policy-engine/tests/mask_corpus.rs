//! Accuracy on the labeled corpus: every detector's precision and recall, exact spans.

use policy_engine::mask::corpus;
use policy_engine::mask::{MaskEngine, MaskSpec, StrategyName};

#[test]
fn precision_and_recall_per_detector() {
    let spec = MaskSpec {
        connections: vec![],
        groups: vec![],
        columns: vec![],
        fields: vec![],
        detectors: vec!["all".into()],
        strategy: StrategyName::Redact,
        keep: None,
        replacement: None,
    };
    let engine = MaskEngine::compile(&[spec], &[], b"k").unwrap();
    let session = engine.session(&[0]);
    let rows = corpus::rows(42, 4000, 8, 30);
    let acc = corpus::accuracy(&session, &rows);
    println!("{}", corpus::table(&acc));
    for a in &acc {
        assert!(
            a.true_pos > 50,
            "{}: too few positives in the corpus ({})",
            a.detector,
            a.true_pos
        );
        assert!(
            a.precision() >= 0.99,
            "{}: precision {:.4}",
            a.detector,
            a.precision()
        );
        assert_eq!(a.false_neg, 0, "{}: recall {:.4}", a.detector, a.recall());
    }
}
