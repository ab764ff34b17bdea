"""Property tests over generated customers (hypothesis): SuggestRetention never suggests an infeasible change —
never today's value, never a shorter contract, never an internet add-on without internet service, never a move the
policy does not list — and discounts are today's charge rounded half up to the cent."""
from __future__ import annotations

import decimal

import pytest
from churn.v1 import common_pb2, inference_pb2
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from services.common import features as F
from services.inference import levers

ADDONS = ("online_security", "online_backup", "device_protection", "tech_support")
ALL_ADDONS = (*ADDONS, "streaming_tv", "streaming_movies")
CONTRACT_ORDER = {"Month-to-month": 0, "One year": 1, "Two year": 2}
PAYMENTS = {"Electronic check", "Mailed check", "Bank transfer (automatic)", "Credit card (automatic)"}
SPELLING = {  # the test's own view of the actionable fields' values
    "contract": {1: "Month-to-month", 2: "One year", 3: "Two year"},
    "payment_method": {1: "Electronic check", 2: "Mailed check", 3: "Bank transfer (automatic)",
                       4: "Credit card (automatic)"},
    **{a: {1: "No", 2: "Yes", 3: "No internet service"} for a in ADDONS},
}
PROPERTY = hsettings(max_examples=120, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Every charge the encoder accepts (its domain bound included), in cents and as odd floats.
charges = st.one_of(st.integers(0, 20_000).map(lambda cents: cents / 100),
                    st.floats(0, F.MAX_MONTHLY_CHARGES, allow_nan=False, allow_infinity=False))


@st.composite
def customers(draw) -> common_pb2.Customer:
    """Any customer the encoder accepts, including inconsistent ones (DSL with "No internet service" add-ons)."""
    internet = draw(st.sampled_from([1, 2, 3]))
    consistent = draw(st.booleans())
    addon = st.just(3) if internet == 3 and consistent else st.sampled_from([1, 2, 3])
    customer = common_pb2.Customer(
        customer_id=draw(st.text("ABCDEF0123456789-", max_size=12)), gender=draw(st.sampled_from([1, 2])),
        senior_citizen=draw(st.booleans()), partner=draw(st.booleans()), dependents=draw(st.booleans()),
        tenure=draw(st.integers(0, 100)), phone_service=draw(st.booleans()),
        multiple_lines=draw(st.sampled_from([1, 2, 3])), internet_service=internet,
        contract=draw(st.sampled_from([1, 2, 3])), paperless_billing=draw(st.booleans()),
        payment_method=draw(st.sampled_from([1, 2, 3, 4])), monthly_charges=draw(charges))
    for name in ALL_ADDONS:
        setattr(customer, name, draw(addon))
    total = draw(st.one_of(st.none(), charges))
    if total is not None:
        customer.total_charges = total
    return customer


def discounted(monthly: float, percent: int) -> float:
    exact = decimal.Decimal(repr(monthly)) * (100 - percent) / 100
    return float(exact.quantize(decimal.Decimal("0.01"), rounding=decimal.ROUND_HALF_UP))


def check_feasible(customer: common_pb2.Customer, change, allowed: set[str]) -> None:
    field, now, new = change.field, change.current_value, change.new_value
    assert now != new
    if field == "monthly_charges":
        assert f"discount:{change.discount_percent}" in allowed
        assert now == repr(customer.monthly_charges)
        assert float(new) == discounted(customer.monthly_charges, change.discount_percent) != customer.monthly_charges
        return
    assert change.discount_percent == 0
    if field == "paperless_billing":
        assert now == ("Yes" if customer.paperless_billing else "No")
        assert f"paperless_billing:{new.lower()}" in allowed
        return
    assert now == SPELLING[field][getattr(customer, field)]
    if field == "contract":
        assert CONTRACT_ORDER[new] > CONTRACT_ORDER[now]  # never shorter, never the same
    elif field == "payment_method":
        assert new in PAYMENTS
    else:
        assert field in ADDONS
        assert customer.internet_service != common_pb2.INTERNET_SERVICE_NO
        assert getattr(customer, field) != common_pb2.INTERNET_ADDON_NO_INTERNET_SERVICE
    assert f"{field}:{move_value(new)}" in allowed


def move_value(spelling: str) -> str:
    """"Bank transfer (automatic)" -> "bank_transfer_automatic", as RETENTION_MOVES names values."""
    return spelling.lower().replace(" (", "_").replace(")", "").replace(" ", "_")


def check_levers(batch, results, allowed: set[str]) -> None:
    assert len(results) == len(batch)
    for customer, lv in zip(batch, results):
        pairs = [lv.best_pair] if lv.best_pair else []
        for suggestion, size in [(s, 1) for s in lv.singles] + [(s, 2) for s in pairs]:
            assert len(suggestion.changes) == size
            assert len({c.field for c in suggestion.changes}) == size
            assert suggestion.probability < lv.probability
            for change in suggestion.changes:
                check_feasible(customer, change, allowed)


@pytest.fixture(scope="module")
def default_allowed(settings) -> set[str]:
    return set(settings.retention_moves)


@PROPERTY
@given(batch=st.lists(customers(), min_size=1, max_size=8))
def test_served_suggestions_are_always_feasible(servers, default_allowed, batch):
    client = servers["production"][1]
    reply = client.stub.SuggestRetention(inference_pb2.SuggestRetentionRequest(customers=batch, top_k=10),
                                         metadata=client.metadata(), timeout=30)
    results = [levers.CustomerLevers(lv.customer_id, lv.probability, list(lv.single_changes),
                                     lv.best_pair if lv.HasField("best_pair") else None) for lv in reply.levers]
    check_levers(batch, results, default_allowed)


VOCABULARY = sorted(levers.vocabulary())


@PROPERTY
@given(batch=st.lists(customers(), min_size=1, max_size=8),
       moves=st.sets(st.sampled_from(VOCABULARY + [f"discount:{p}" for p in (1, 5, 10, 15, 20, 50)]), min_size=1))
def test_only_the_moves_a_policy_lists_appear(servers, batch, moves):
    """Any allowed-move set (including removing add-ons, which the default omits) through the domain advisor on the
    served model."""
    advisor = levers.RetentionAdvisor(servers["staging"][0].holder,
                                      levers.Policy(levers.parse_moves(sorted(moves)), max_customers=100))
    results, _ = advisor.suggest(batch, top_k=10)
    check_levers(batch, results, moves)
