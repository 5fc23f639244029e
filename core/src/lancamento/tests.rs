use super::*;
use crate::failure::Code;

fn sample() -> Lancamento {
    Lancamento {
        id: EntryId::random(),
        merchant_id: MerchantId::parse("loja-1").unwrap(),
        tipo: Tipo::Debito,
        valor: "10.50".parse().unwrap(),
        data: "2026-01-31".parse().unwrap(),
        descricao: "aluguel".into(),
        categoria: Some("fixo".into()),
        criado_em: DateTime::parse_from_rfc3339("2026-01-31T10:00:00.125Z").unwrap().with_timezone(&Utc),
        estorno_de: None,
    }
}

#[test]
fn the_first_and_last_business_dates_are_the_bounds_new_accepts() {
    assert_eq!(BusinessDate::FIRST.to_string(), "1900-01-01");
    assert_eq!(BusinessDate::LAST.to_string(), "9999-12-31");
    for bound in [BusinessDate::FIRST, BusinessDate::LAST] {
        assert_eq!(BusinessDate::new(bound.date()), Ok(bound));
    }
    assert!(BusinessDate::FIRST.date().pred_opt().is_some_and(|d| BusinessDate::new(d).is_err()));
    assert!(BusinessDate::LAST.date().succ_opt().is_some_and(|d| BusinessDate::new(d).is_err()));
}

#[test]
fn encode_decode_round_trips() {
    let l = sample();
    assert_eq!(Lancamento::decode(&l.encode()), Ok(l.clone()));
    assert_eq!(l.signed_cents(), -1050);
}

#[test]
fn a_retry_has_the_same_facts_and_a_change_does_not() {
    let a = sample().to_record();
    let retry = LancamentoRecord { criado_em: "2030-01-01T00:00:00.000Z".into(), ..a.clone() };
    assert!(a.same_facts(&retry));
    let changed = LancamentoRecord { valor_cents: a.valor_cents + 1, ..a.clone() };
    assert!(!a.same_facts(&changed));
}

#[test]
fn decode_classifies_bad_records() {
    assert_eq!(Lancamento::decode(b"{not json").unwrap_err().code(), Code::Malformed);
    let mut v = serde_json::to_value(sample().to_record()).unwrap();
    v["v"] = 2.into();
    let e = Lancamento::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert_eq!(e, DecodeError::UnknownVersion(2));
    // Another version is told by its `v` whatever its shape; a record without `v` is malformed.
    let other_shape = br#"{"v":2,"lancamento":{"valor":"1.00"}}"#;
    assert_eq!(Lancamento::decode(other_shape).unwrap_err(), DecodeError::UnknownVersion(2));
    let mut unversioned = v.clone();
    unversioned.as_object_mut().unwrap().remove("v");
    let e = Lancamento::decode(&serde_json::to_vec(&unversioned).unwrap()).unwrap_err();
    assert_eq!(e, DecodeError::Malformed("missing field `v`".into()));
    assert_eq!(Lancamento::decode(br#"{"v":1}"#).unwrap_err().code(), Code::Malformed);
    // A record is a JSON object: its fields as an array, in order, are malformed.
    let object = serde_json::to_value(sample().to_record()).unwrap();
    let fields = ["v", "id", "merchant_id", "tipo", "valor_cents", "data", "descricao", "categoria", "criado_em"];
    let array: Vec<serde_json::Value> = fields.iter().map(|f| object[*f].clone()).collect();
    let e = Lancamento::decode(&serde_json::to_vec(&array).unwrap()).unwrap_err();
    assert_eq!(e.code(), Code::Malformed, "{e}");
    v["v"] = 1.into();
    v["valor_cents"] = 0.into();
    let e = Lancamento::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert_eq!(e.code(), Code::InvalidField);
    assert!(e.to_string().contains("valor_cents"), "{e}");
}

#[test]
fn a_reversal_decodes_then_applies_as_the_inverse_of_its_original() {
    let original = sample();
    let reversal = Reversal {
        id: EntryId::reversal_of(&original.merchant_id, original.id),
        merchant_id: original.merchant_id.clone(),
        of: original.id,
        data: "2026-02-03".parse().unwrap(),
        descricao: "devolução".into(),
        criado_em: original.criado_em,
        stated: None,
    };
    let Ok(Incoming::Reversal(decoded)) = Incoming::decode(&reversal.encode()) else {
        panic!("not decoded as a reversal")
    };
    assert_eq!(decoded, reversal);
    let entry = reversal.apply_to(&original.to_record()).unwrap();
    assert_eq!((entry.tipo, entry.valor, entry.categoria.as_deref()), (Tipo::Credito, original.valor, Some("fixo")));
    assert_eq!(entry.signed_cents(), -original.signed_cents());
    // The correcting entry, encoded, decodes as the same reversal with its amount stated.
    let Ok(Incoming::Reversal(again)) = Incoming::decode(&entry.encode()) else { panic!("not a reversal") };
    assert_eq!(again.apply_to(&original.to_record()), Ok(entry.clone()));
    // A reversal cannot be reversed, nor state another amount.
    assert!(matches!(reversal.apply_to(&entry.to_record()), Err(ReversalError::OfReversal(_))));
    let wrong = Reversal { stated: Some((Tipo::Credito, 1)), ..reversal };
    assert!(matches!(wrong.apply_to(&original.to_record()), Err(ReversalError::Mismatch { .. })));
}

#[test]
fn an_entry_without_type_or_amount_is_malformed_unless_it_reverses_one() {
    let mut v = serde_json::to_value(sample().to_record()).unwrap();
    v.as_object_mut().unwrap().remove("tipo");
    assert_eq!(Incoming::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err().code(), Code::Malformed);
    v["estorno_de"] = serde_json::to_value(EntryId::random()).unwrap();
    let e = Incoming::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(e.to_string().contains("both tipo and valor_cents or neither"), "{e}");
}

#[test]
fn idempotency_key_gives_a_stable_id_per_merchant() {
    let a = MerchantId::parse("a").unwrap();
    let b = MerchantId::parse("b").unwrap();
    assert_eq!(EntryId::from_idempotency_key(&a, "k1"), EntryId::from_idempotency_key(&a, "k1"));
    assert_ne!(EntryId::from_idempotency_key(&a, "k1"), EntryId::from_idempotency_key(&b, "k1"));
    assert_ne!(EntryId::from_idempotency_key(&a, "k1"), EntryId::from_idempotency_key(&a, "k2"));
}

#[test]
fn dates_are_strict_and_map_to_days() {
    let d: BusinessDate = "2026-02-28".parse().unwrap();
    assert_eq!(BusinessDate::from_days(d.days()), Some(d));
    for bad in
        ["2026-02-30", "2026-2-1", "26-02-01", "2026/02/01", "0999-01-01", "", "2026-1 -01", "+026-01-01", "2026-0a-01"]
    {
        assert!(bad.parse::<BusinessDate>().is_err(), "{bad}");
    }
}

proptest::proptest! {
    /// Every business date prints (and serializes) as `%Y-%m-%d` and reads back as itself.
    #[test]
    fn dates_print_as_iso_and_read_back(days in -25_567i32..=2_932_896) {
        let d = BusinessDate::from_days(days).unwrap();
        let text = d.to_string();
        proptest::prop_assert_eq!(&text, &d.date().format("%Y-%m-%d").to_string());
        proptest::prop_assert_eq!(text.parse::<BusinessDate>(), Ok(d));
        proptest::prop_assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{text}\""));
    }
}
