-- Coupons: one per customer and milestone, whatever retries or replays do.
CREATE TABLE coupons (
    code              text PRIMARY KEY,
    customer_id       text NOT NULL REFERENCES customers,
    milestone         text NOT NULL,
    discount_percent  smallint CHECK (discount_percent BETWEEN 1 AND 100),
    free_shipping     boolean NOT NULL DEFAULT false,
    issued_at         timestamptz NOT NULL,
    expires_at        timestamptz NOT NULL,
    redeemed_order_id text,
    redeemed_at       timestamptz,
    UNIQUE (customer_id, milestone)
);

-- Every phase a customer entered, for `orders lifecycle report`.
CREATE TABLE customer_phase_changes (
    customer_id text NOT NULL,
    phase       text NOT NULL CHECK (phase IN ('new', 'active', 'loyal', 'lapsed', 'churned', 'won_back')),
    at          timestamptz NOT NULL,
    order_id    text,
    PRIMARY KEY (customer_id, at, phase)
);

-- Each lapse: win-back sent or held out, and whether the customer came back.
CREATE TABLE win_backs (
    customer_id       text NOT NULL,
    lapse_no          integer NOT NULL,
    grp               text NOT NULL CHECK (grp IN ('treated', 'holdout')),
    lapsed_at         timestamptz NOT NULL,
    coupon_code       text,
    reordered_order_id text,
    reordered_at      timestamptz,
    churned_at        timestamptz,
    PRIMARY KEY (customer_id, lapse_no)
);
