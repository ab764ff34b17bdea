"""Retention levers: which allowed change to a customer the model scores as lowering churn the most.

Every counterfactual is built by editing the customer's encoded float32 row (the one `features.encode_customers`
produced), never by re-encoding protos, and all variants of all customers of a request — each allowed single change
and each pair of changes on different fields — are scored in ONE model call together with the customers themselves.
A variant row equals, bit for bit, the encoding of the modified customer, so its probability is what `Predict` would
answer for that customer (within 1e-6: Predict may score a small batch on compiled trees, this call is large).

Feasibility, per customer: never today's value, never a shorter contract than today's, never an internet add-on for
a customer without internet service (InternetService "No", or the add-on itself "No internet service"). Add-ons are
scored at today's monthly charge (offered at no extra cost). A discount scales MonthlyCharges by (1 - p/100),
rounded half up to the cent; TotalCharges stays unchanged (it is what the customer has paid so far, and a discount
applies to future bills). These are the model's associations, not causal effects of an offer.
"""
from __future__ import annotations

import dataclasses
import decimal
import itertools
from typing import Sequence

import numpy as np
from churn.v1 import common_pb2

from services.common import features as F
from services.common import shadow
from services.common.errors import InvalidInput, ResourceExhausted
from services.inference import metrics
from services.inference.model import LoadedModel, ModelHolder

DEFAULT_TOP_K, MAX_TOP_K = 3, 10
MAX_DISCOUNT_PERCENT = 50
CENT = decimal.Decimal("0.01")
MAX_DISCOUNTABLE = 1e12  # monthly charge; far beyond any real bill, far below int64 cents overflow
ACTIONABLE = ("contract", "paperless_billing", "payment_method", "online_security", "online_backup",
              "device_protection", "tech_support")
ADDONS = ("online_security", "online_backup", "device_protection", "tech_support")
CONTRACT = "contract"
DISCOUNT = "discount"
MONTHLY = "monthly_charges"
NO_INTERNET_SPELLING = F.ENUM_SPELLING["INTERNET_SERVICE_NO"]
NO_INTERNET_ADDON_SPELLING = F.ENUM_SPELLING["INTERNET_ADDON_NO_INTERNET_SERVICE"]

_BLOCKS = {f.name: np.flatnonzero(F.ENCODED_FEATURE_INDEX == i) for i, f in enumerate(F.FEATURES)}
_MONTHLY_COL = int(_BLOCKS[MONTHLY][0])


@dataclasses.dataclass(frozen=True)
class Move:
    """One allowed change: `name` as in RETENTION_MOVES (`contract:two_year`, `discount:10`). For a field move,
    `position` is the new value's index in the field's encoded block (booleans: 0 = No, 1 = Yes) and `spelling` its
    Telco CSV spelling; a discount has `percent`."""

    name: str
    field: str
    position: int = -1
    spelling: str = ""
    percent: int = 0


def _value_names(spec: F.FeatureSpec) -> list[str]:
    """Move value names of a field in encoded order: enum names without the prefix, lower case; yes/no."""
    if spec.kind == F.BOOLEAN:
        return ["no", "yes"]
    enum = common_pb2.Customer.DESCRIPTOR.fields_by_name[spec.name].enum_type
    prefix = enum.values[0].name.removesuffix("UNSPECIFIED")
    return [enum.values_by_number[n].name.removeprefix(prefix).lower() for n in spec.enum_numbers]


def vocabulary() -> dict[str, Move]:
    """Every field move a setting may allow. Month-to-month and "no internet service" are absent: moving to them is
    never feasible (shorter contract / dropping internet is no retention offer)."""
    moves = {}
    for field in ACTIONABLE:
        spec = F.FEATURE_BY_NAME[field]
        for position, (value, spelling) in enumerate(zip(_value_names(spec), spec.categories)):
            if value in ("month_to_month", "no_internet_service"):
                continue
            moves[f"{field}:{value}"] = Move(f"{field}:{value}", field, position, spelling)
    return moves


def parse_moves(names: Sequence[str]) -> tuple[Move, ...]:
    """Validate RETENTION_MOVES at start: known names (or `discount:<1-50>`), no duplicates, at least one."""
    known = vocabulary()
    moves = []
    for name in names:
        kind, _, value = name.partition(":")
        if kind == DISCOUNT:
            if not value.isdigit() or not 1 <= int(value) <= MAX_DISCOUNT_PERCENT:
                raise ValueError(f"RETENTION_MOVES: {name!r} must be discount:<percent 1-{MAX_DISCOUNT_PERCENT}>")
            moves.append(Move(f"{DISCOUNT}:{int(value)}", MONTHLY, percent=int(value)))
        elif name in known:
            moves.append(known[name])
        else:
            raise ValueError(f"RETENTION_MOVES: unknown move {name!r}; known: {', '.join(known)}, "
                             f"discount:<percent 1-{MAX_DISCOUNT_PERCENT}>")
    if not moves:
        raise ValueError("RETENTION_MOVES: at least one move is required")
    duplicates = sorted({m.name for m in moves if sum(o.name == m.name for o in moves) > 1})
    if duplicates:
        raise ValueError(f"RETENTION_MOVES: listed twice: {', '.join(duplicates)}")
    return tuple(moves)


@dataclasses.dataclass(frozen=True)
class Policy:
    """What SuggestRetention may do: the allowed moves and the customers per request."""

    moves: tuple[Move, ...]
    max_customers: int

    @classmethod
    def from_settings(cls, settings) -> "Policy":
        if settings.retention_max_customers < 1:
            raise ValueError("RETENTION_MAX_CUSTOMERS must be at least 1")
        return cls(parse_moves(settings.retention_moves), settings.retention_max_customers)


@dataclasses.dataclass(frozen=True)
class Change:
    field: str
    current_value: str
    new_value: str
    discount_percent: int = 0


@dataclasses.dataclass(frozen=True)
class Suggestion:
    changes: tuple[Change, ...]
    probability: float
    delta: float


@dataclasses.dataclass(frozen=True)
class CustomerLevers:
    customer_id: str
    probability: float
    singles: list[Suggestion]
    best_pair: Suggestion | None


def discounted_charges(monthly: np.ndarray, percents: np.ndarray) -> np.ndarray:
    """(n, n_discounts) float64: today's charge (as the caller wrote it, i.e. its shortest decimal) x (100 - p) / 100,
    rounded half up to the cent, as the double a caller would send — float32 of it is exactly how encode_customers
    encodes a customer sent with the discounted charge. Whole cents (every Telco charge) take exact int64
    arithmetic; other charges decimal arithmetic. A charge of MAX_DISCOUNTABLE or more keeps its value, which makes
    its discounts infeasible."""
    huge = monthly >= MAX_DISCOUNTABLE
    cents = np.round(np.where(huge, 0.0, monthly) * 100.0)
    out = ((cents.astype(np.int64)[:, None] * (100 - percents.astype(np.int64))[None, :] + 50) // 100) / 100.0
    out[huge] = monthly[huge, None]
    for r in np.flatnonzero(~huge & (cents / 100.0 != monthly)):
        exact = decimal.Decimal(repr(float(monthly[r])))
        out[r] = [float((exact * (100 - int(p)) / 100).quantize(CENT, rounding=decimal.ROUND_HALF_UP))
                  for p in percents]
    return out


def _money(value: float) -> str:
    return repr(float(value))


class _Variants:
    """The variant table of a policy, built once: for each variant (every single move, then every pair of moves on
    different fields) the columns it keeps, the values it sets and its discount (index into the policy's discounts,
    -1 for none). A variant row = base row * keep + set, then the per-customer discounted charge if any."""

    def __init__(self, moves: tuple[Move, ...]):
        self.moves = moves
        m = len(moves)
        self.discounts = np.array([mv.percent for mv in moves if mv.percent], dtype=np.float64)
        disc_index = {i: k for k, i in enumerate(i for i, mv in enumerate(moves) if mv.percent)}
        keep = np.ones((m, F.N_ENCODED), dtype=np.float32)
        put = np.zeros((m, F.N_ENCODED), dtype=np.float32)
        for i, mv in enumerate(moves):
            block = _BLOCKS[mv.field]
            keep[i, block] = 0.0
            if mv.percent:
                continue
            if F.FEATURE_BY_NAME[mv.field].kind == F.BOOLEAN:
                put[i, block[0]] = float(mv.position)
            else:
                put[i, block[mv.position]] = 1.0
        pairs = [(a, b) for a, b in itertools.combinations(range(m), 2) if moves[a].field != moves[b].field]
        self.pair_a = np.array([a for a, _ in pairs], dtype=np.intp)
        self.pair_b = np.array([b for _, b in pairs], dtype=np.intp)
        self.keep = np.concatenate([keep, keep[self.pair_a] * keep[self.pair_b]])
        self.put = np.concatenate([put, put[self.pair_a] + put[self.pair_b]])
        single_disc = np.array([disc_index.get(i, -1) for i in range(m)], dtype=np.intp)
        self.discount = np.concatenate([single_disc, np.maximum(single_disc[self.pair_a], single_disc[self.pair_b])])
        self.moves_of = [(i,) for i in range(m)] + pairs

    def feasible(self, X: np.ndarray, monthly: np.ndarray, discounted: np.ndarray) -> np.ndarray:
        """(n, n_moves) bool: the move applies to the customer (see the module docstring)."""
        out = np.zeros((X.shape[0], len(self.moves)), dtype=bool)
        no_internet = X[:, _BLOCKS["internet_service"][
            F.FEATURE_BY_NAME["internet_service"].categories.index(NO_INTERNET_SPELLING)]] == 1.0
        for i, mv in enumerate(self.moves):
            block = _BLOCKS[mv.field]
            if mv.percent:
                out[:, i] = discounted[:, self.discount[i]] != monthly
            elif F.FEATURE_BY_NAME[mv.field].kind == F.BOOLEAN:
                out[:, i] = X[:, block[0]] != float(mv.position)
            elif mv.field == CONTRACT:
                out[:, i] = X[:, block].argmax(axis=1) < mv.position  # strictly longer than today's
            else:
                out[:, i] = X[:, block[mv.position]] == 0.0
                if mv.field in ADDONS:
                    no_addon = block[F.FEATURE_BY_NAME[mv.field].categories.index(NO_INTERNET_ADDON_SPELLING)]
                    out[:, i] &= ~no_internet & (X[:, no_addon] == 0.0)
        return out

    def all_feasible(self, single: np.ndarray) -> np.ndarray:
        """(n, n_variants) bool: a pair is feasible when both its moves are."""
        return np.concatenate([single, single[:, self.pair_a] & single[:, self.pair_b]], axis=1)


class RetentionAdvisor:
    """SuggestRetention's domain: validate, encode once, build every feasible variant by editing encoded rows,
    score customers + variants in one model call, rank."""

    def __init__(self, holder: ModelHolder, policy: Policy):
        self._holder = holder
        self.policy = policy
        self._variants = _Variants(policy.moves)

    def suggest(self, customers: Sequence[common_pb2.Customer],
                top_k: int = 0) -> tuple[list[CustomerLevers], LoadedModel]:
        """Levers per customer, in request order, and the model that scored them. Errors name `customers[i].<field>`
        (the same validation as PredictBatch) or `top_k`; more than `max_customers` is RESOURCE_EXHAUSTED."""
        n = len(customers)
        if n == 0:
            raise InvalidInput("customers", "at least one customer is required")
        if n > self.policy.max_customers:
            raise ResourceExhausted(f"customers: {n} in one request, the limit is {self.policy.max_customers} "
                                    "(send smaller batches)")
        if top_k > MAX_TOP_K:
            raise InvalidInput("top_k", f"must be at most {MAX_TOP_K} (0 = {DEFAULT_TOP_K}), got {top_k}")
        top_k = top_k or DEFAULT_TOP_K
        X = F.encode_customers(customers, label="customers")
        monthly = np.fromiter((c.monthly_charges for c in customers), dtype=np.float64, count=n)
        v = self._variants
        discounted = discounted_charges(monthly, v.discounts)
        feasible = v.all_feasible(v.feasible(X, monthly, discounted))
        rows, variant = np.nonzero(feasible)
        Xv = X[rows] * v.keep[variant] + v.put[variant]
        with_discount = v.discount[variant] >= 0
        Xv[with_discount, _MONTHLY_COL] = discounted[rows[with_discount], v.discount[variant[with_discount]]]
        model = self._holder.current  # read once: a reload mid-request does not mix two models
        scored = np.asarray(model.native.probability(np.concatenate([X, Xv])), dtype=np.float64)
        current = scored[:n]
        probabilities = np.full(feasible.shape, np.inf)
        probabilities[rows, variant] = scored[n:]
        metrics.batch_rows("SuggestRetention", shadow.traffic()).observe(n)
        metrics.RETENTION_ROWS.observe(len(scored))
        return self._rank(customers, X, monthly, discounted, current, probabilities, top_k), model

    def _rank(self, customers, X, monthly, discounted, current, probabilities, top_k) -> list[CustomerLevers]:
        """Per customer: the top_k single moves that lower P(churn) (lowest first) and the lowest pair, if lower."""
        m = len(self.policy.moves)
        order = np.argsort(probabilities[:, :m], axis=1, kind="stable")[:, :top_k]
        lower = np.take_along_axis(probabilities, order, axis=1) < current[:, None]
        pairs = probabilities[:, m:].argmin(axis=1) + m if probabilities.shape[1] > m else np.zeros(len(X), np.intp)
        pair_lower = (probabilities[np.arange(len(X)), pairs] < current) & (probabilities.shape[1] > m)
        now = self._current_values(X, monthly)
        moves, discount = self.policy.moves, self._variants.discount
        out = []
        for r, customer in enumerate(customers):
            p = float(current[r])

            def suggestion(variant: int) -> Suggestion:
                changes = tuple(
                    Change(MONTHLY, now[MONTHLY][r], _money(discounted[r, discount[i]]), moves[i].percent)
                    if moves[i].percent else Change(moves[i].field, now[moves[i].field][r], moves[i].spelling)
                    for i in self._variants.moves_of[variant])
                probability = float(probabilities[r, variant])
                return Suggestion(changes, probability, probability - p)

            out.append(CustomerLevers(customer.customer_id, p,
                                      [suggestion(int(j)) for j, ok in zip(order[r], lower[r]) if ok],
                                      suggestion(int(pairs[r])) if pair_lower[r] else None))
        return out

    def _current_values(self, X: np.ndarray, monthly: np.ndarray) -> dict[str, list[str]]:
        """Today's value, in the Telco spelling, of every field a move may change, per customer (decoded once)."""
        now = {}
        for field in {mv.field for mv in self.policy.moves}:
            if field == MONTHLY:
                now[field] = [_money(v) for v in monthly.tolist()]
                continue
            spec, block = F.FEATURE_BY_NAME[field], _BLOCKS[field]
            positions = X[:, block[0]] if spec.kind == F.BOOLEAN else X[:, block].argmax(axis=1)
            now[field] = [spec.categories[i] for i in positions.astype(np.intp).tolist()]
        return now
