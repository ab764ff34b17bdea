"""SuggestRetention through a real in-process server on both aliases: every suggested probability equals Predict on
the customer modified by hand from the suggestion's own changes; the ranking equals an independent enumeration of
the feasible changes scored by PredictBatch; bad input is INVALID_ARGUMENT naming the field."""
from __future__ import annotations

import dataclasses
import decimal
import itertools
import subprocess
import sys

import grpc
import numpy as np
import pandas as pd
import pytest
from churn.v1 import common_pb2, inference_pb2

from services.common import telco_csv
from services.inference import levers
from tests.harness import ROOT
from tests.inference.conftest import TELCO_CSV, Client, start_app

PARITY_CUSTOMERS = 500
TOL = 1e-6
ADDONS = ("online_security", "tech_support", "online_backup", "device_protection")
# The test's own spelling -> enum tables for the actionable fields (independent of the service's move table).
ENUMS = {
    "contract": {"Month-to-month": common_pb2.CONTRACT_MONTH_TO_MONTH, "One year": common_pb2.CONTRACT_ONE_YEAR,
                 "Two year": common_pb2.CONTRACT_TWO_YEAR},
    "payment_method": {"Electronic check": common_pb2.PAYMENT_METHOD_ELECTRONIC_CHECK,
                       "Mailed check": common_pb2.PAYMENT_METHOD_MAILED_CHECK,
                       "Bank transfer (automatic)": common_pb2.PAYMENT_METHOD_BANK_TRANSFER_AUTOMATIC,
                       "Credit card (automatic)": common_pb2.PAYMENT_METHOD_CREDIT_CARD_AUTOMATIC},
    **{a: {"No": common_pb2.INTERNET_ADDON_NO, "Yes": common_pb2.INTERNET_ADDON_YES,
           "No internet service": common_pb2.INTERNET_ADDON_NO_INTERNET_SERVICE} for a in ADDONS},
}
CONTRACT_ORDER = [common_pb2.CONTRACT_MONTH_TO_MONTH, common_pb2.CONTRACT_ONE_YEAR, common_pb2.CONTRACT_TWO_YEAR]
DISCOUNTS = (5, 10, 20)


def spelling(customer: common_pb2.Customer, field: str) -> str:
    value = getattr(customer, field)
    if field == "paperless_billing":
        return "Yes" if value else "No"
    if field == "monthly_charges":
        return repr(value)
    return {v: k for k, v in ENUMS[field].items()}[value]


def apply(customer: common_pb2.Customer, changes) -> common_pb2.Customer:
    """The customer with the suggestion's changes made by hand, as an agent would send it to Predict."""
    modified = common_pb2.Customer()
    modified.CopyFrom(customer)
    for change in changes:
        if change.field == "monthly_charges":
            modified.monthly_charges = float(change.new_value)
        elif change.field == "paperless_billing":
            modified.paperless_billing = change.new_value == "Yes"
        else:
            setattr(modified, change.field, ENUMS[change.field][change.new_value])
    return modified


def feasible_changes(customer: common_pb2.Customer) -> list[tuple[str, str, int]]:
    """The default policy's moves that apply to this customer: (field, new value spelling, discount percent)."""
    out = [("contract", s, 0) for s, e in ENUMS["contract"].items()
           if CONTRACT_ORDER.index(e) > CONTRACT_ORDER.index(customer.contract)]
    out += [("payment_method", s, 0) for s, e in ENUMS["payment_method"].items() if e != customer.payment_method]
    out.append(("paperless_billing", "No" if customer.paperless_billing else "Yes", 0))
    has_internet = customer.internet_service != common_pb2.INTERNET_SERVICE_NO
    out += [(a, "Yes", 0) for a in ADDONS if has_internet and getattr(customer, a) == common_pb2.INTERNET_ADDON_NO]
    for percent in DISCOUNTS:
        exact = decimal.Decimal(repr(customer.monthly_charges)) * (100 - percent) / 100
        new = float(exact.quantize(decimal.Decimal("0.01"), rounding=decimal.ROUND_HALF_UP))
        if new != customer.monthly_charges:
            out.append(("monthly_charges", repr(new), percent))
    return out


@pytest.fixture(scope="module")
def telco() -> list[common_pb2.Customer]:
    frame = pd.read_csv(TELCO_CSV)
    return telco_csv.frame_to_customers(frame.assign(TotalCharges=pd.to_numeric(frame.TotalCharges, errors="coerce")))


def predict_all(client: Client, customers: list[common_pb2.Customer]) -> np.ndarray:
    out = []
    for start in range(0, len(customers), 2000):
        reply = client.stub.PredictBatch(inference_pb2.PredictBatchRequest(customers=customers[start:start + 2000]),
                                         metadata=client.metadata(), timeout=60)
        out += [p.probability for p in reply.predictions]
    return np.array(out)


def suggest(client: Client, customers, top_k: int = 0, role: str = "agent") -> inference_pb2.SuggestRetentionResponse:
    return client.stub.SuggestRetention(inference_pb2.SuggestRetentionRequest(customers=customers, top_k=top_k),
                                        metadata=client.metadata(role), timeout=60)


@pytest.mark.parametrize("alias", ["production", "staging"])
def test_every_suggestion_equals_predict_on_the_modified_customer(servers, telco, alias):
    client = servers[alias][1]
    customers = telco[:PARITY_CUSTOMERS]
    reply = suggest(client, customers, top_k=levers.MAX_TOP_K)
    info = client.stub.GetModelInfo(inference_pb2.GetModelInfoRequest(), metadata=client.metadata())
    assert (reply.model.name, reply.model.version, reply.model.alias) == \
        (info.model.name, info.model.version, alias)
    assert [lv.customer_id for lv in reply.levers] == [c.customer_id for c in customers]
    modified, claimed = [], []
    for customer, lv in zip(customers, reply.levers):
        suggestions = list(lv.single_changes) + ([lv.best_pair] if lv.HasField("best_pair") else [])
        for s in suggestions:
            assert all(c.current_value == spelling(customer, c.field) for c in s.changes)
            assert s.delta == pytest.approx(s.probability - lv.probability, abs=1e-12) and s.delta < 0
            modified.append(apply(customer, s.changes))
            claimed.append(s.probability)
        probabilities = [s.probability for s in lv.single_changes]
        assert probabilities == sorted(probabilities) and len(probabilities) <= levers.MAX_TOP_K
    assert len(claimed) > 3 * PARITY_CUSTOMERS  # most customers have several levers
    np.testing.assert_allclose([lv.probability for lv in reply.levers], predict_all(client, customers),
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(claimed, predict_all(client, modified), rtol=0, atol=1e-6)


@pytest.mark.parametrize("alias", ["production", "staging"])
def test_ranking_equals_an_independent_enumeration(servers, telco, alias):
    """The test enumerates every feasible single change and pair itself, scores them with PredictBatch and expects
    exactly the service's top-k singles and best pair."""
    client = servers[alias][1]
    customers = telco[100:160]
    reply = suggest(client, customers, top_k=4)
    for customer, lv in zip(customers, reply.levers):
        singles = feasible_changes(customer)
        pairs = [(a, b) for a, b in itertools.combinations(singles, 2) if a[0] != b[0]]
        variants = [[c] for c in singles] + [list(p) for p in pairs]
        changes = [[inference_pb2.RetentionChange(field=f, new_value=v) for f, v, _ in combo] for combo in variants]
        scores = predict_all(client, [apply(customer, c) for c in changes])
        single_scores, pair_scores = scores[:len(singles)], scores[len(singles):]
        # Predict may run another predictor than the service's one big call (compiled trees below a batch size,
        # equal within 1e-6), so a change the model ignores can land a hair either side of today's probability.
        current, k = lv.probability, 4
        got = [s.probability for s in lv.single_changes]
        assert min(k, int((single_scores < current - TOL).sum())) <= len(got) <= \
            min(k, int((single_scores < current + TOL).sum()))
        assert got == pytest.approx(np.sort(single_scores)[:len(got)].tolist(), abs=TOL)
        for s in lv.single_changes:  # each one is a feasible change, scored as the service says (ties in any order)
            (change,) = s.changes
            index = singles.index((change.field, change.new_value, change.discount_percent))
            assert single_scores[index] == pytest.approx(s.probability, abs=TOL)
        if lv.HasField("best_pair"):
            assert lv.best_pair.probability == pytest.approx(pair_scores.min(), abs=TOL)
            assert len({c.field for c in lv.best_pair.changes}) == 2
        else:
            assert not pair_scores.size or pair_scores.min() > current - TOL


def test_every_role_may_ask_and_one_customer_works(production, telco):
    for role in ("agent", "admin", "service"):
        reply = suggest(production, [telco[0]], role=role)
        assert len(reply.levers) == 1 and len(reply.levers[0].single_changes) == levers.DEFAULT_TOP_K


def test_a_narrower_policy_only_ever_suggests_its_moves(servers, telco):
    """RETENTION_MOVES narrows the moves: the domain advisor over the served model with two allowed moves."""
    inference = servers["production"][0]
    policy = levers.Policy(levers.parse_moves(["contract:two_year", "discount:10"]), max_customers=1000)
    advisor = levers.RetentionAdvisor(inference.holder, policy)
    results, _ = advisor.suggest(telco[:300], top_k=10)
    seen = {(c.field, c.discount_percent) for r in results for s in r.singles + ([r.best_pair] if r.best_pair else [])
            for c in s.changes}
    assert seen == {("contract", 0), ("monthly_charges", 10)}
    assert all(c.new_value == "Two year" for r in results for s in r.singles for c in s.changes
               if c.field == "contract")


@pytest.fixture(scope="module")
def small(settings, keys, tmp_path_factory):
    policy = levers.Policy.from_settings(dataclasses.replace(settings, retention_max_customers=5))
    inference = start_app(settings, keys, tmp_path_factory.mktemp("levers"), "production", retention=policy)
    caller = Client(f"127.0.0.1:{inference.port}", settings, keys)
    yield caller
    caller.close()
    inference.stop(1)


def bad(telco, **changes) -> common_pb2.Customer:
    customer = common_pb2.Customer()
    customer.CopyFrom(telco[0])
    for name, value in changes.items():
        customer.ClearField(name) if value is None else setattr(customer, name, value)
    return customer


@pytest.mark.parametrize("case,code,field", [
    ("no customers", grpc.StatusCode.INVALID_ARGUMENT, "customers"),
    ("top_k too large", grpc.StatusCode.INVALID_ARGUMENT, "top_k"),
    ("unspecified contract", grpc.StatusCode.INVALID_ARGUMENT, "customers[1].contract"),
    ("missing monthly charges", grpc.StatusCode.INVALID_ARGUMENT, "customers[0].monthly_charges"),
    ("negative monthly charges", grpc.StatusCode.INVALID_ARGUMENT, "customers[2].monthly_charges"),
    ("too many customers", grpc.StatusCode.RESOURCE_EXHAUSTED, "limit is 5"),
])
def test_bad_input_names_the_field(small, telco, case, code, field):
    request = {
        "no customers": inference_pb2.SuggestRetentionRequest(),
        "top_k too large": inference_pb2.SuggestRetentionRequest(customers=telco[:1], top_k=11),
        "unspecified contract": inference_pb2.SuggestRetentionRequest(customers=[telco[0], bad(telco, contract=0)]),
        "missing monthly charges": inference_pb2.SuggestRetentionRequest(
            customers=[bad(telco, monthly_charges=None)]),
        "negative monthly charges": inference_pb2.SuggestRetentionRequest(
            customers=[telco[0], telco[1], bad(telco, monthly_charges=-5.0)]),
        "too many customers": inference_pb2.SuggestRetentionRequest(customers=telco[:6]),
    }[case]
    with pytest.raises(grpc.RpcError) as error:
        small.stub.SuggestRetention(request, metadata=small.metadata(), timeout=10)
    assert error.value.code() == code
    assert field in error.value.details()


@pytest.mark.parametrize("moves,message", [
    (["contract:month_to_month"], "unknown move 'contract:month_to_month'"),
    (["online_security:no_internet_service"], "unknown move"),
    (["discount:0"], "discount:<percent 1-50>"),
    (["discount:51"], "discount:<percent 1-50>"),
    (["discount:ten"], "discount:<percent 1-50>"),
    (["tech_support:yes", "tech_support:yes"], "listed twice: tech_support:yes"),
    ([], "at least one move"),
])
def test_the_moves_setting_is_validated_at_start(settings, moves, message):
    with pytest.raises(ValueError, match="RETENTION_MOVES") as error:
        levers.Policy.from_settings(dataclasses.replace(settings, retention_moves=tuple(moves)))
    assert message in str(error.value)


def test_the_service_refuses_to_start_with_a_bad_moves_setting(trained_registry):
    done = subprocess.run([sys.executable, "-m", "services.inference"], cwd=ROOT, capture_output=True, text=True,
                          env=dict(trained_registry, RETENTION_MOVES="contract:weekly"), timeout=120)
    assert done.returncode == 2
    assert "RETENTION_MOVES: unknown move 'contract:weekly'" in done.stderr
