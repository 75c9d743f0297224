CREATE TABLE customers (
    customer_id   text PRIMARY KEY,
    name          text NOT NULL,
    email         text NOT NULL,
    phone         text,
    timezone      text NOT NULL,
    email_opt_in  boolean NOT NULL DEFAULT true,
    sms_opt_in    boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    order_id            text PRIMARY KEY,
    customer_id         text NOT NULL REFERENCES customers,
    seller_id           text NOT NULL,
    seller_name         text NOT NULL,
    placed_at           timestamptz NOT NULL,
    currency            text NOT NULL,
    total               numeric(18, 3) NOT NULL,
    delivery_method     text NOT NULL,
    status              text NOT NULL DEFAULT 'open',
    cancellation_reason text,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer ON orders (customer_id);

CREATE TABLE order_items (
    order_id    text NOT NULL REFERENCES orders ON DELETE CASCADE,
    line_no     integer NOT NULL,
    sku         text NOT NULL,
    name        text NOT NULL,
    category    text NOT NULL,
    quantity    integer NOT NULL CHECK (quantity > 0),
    unit_price  numeric(18, 3) NOT NULL CHECK (unit_price > 0),
    PRIMARY KEY (order_id, line_no)
);
CREATE INDEX order_items_sku ON order_items (sku, order_id);
CREATE INDEX order_items_category ON order_items (category);

CREATE TABLE feedback (
    order_id      text PRIMARY KEY REFERENCES orders,
    customer_id   text NOT NULL,
    seller_id     text NOT NULL,
    skus          text[] NOT NULL,
    item_rating   smallint NOT NULL CHECK (item_rating BETWEEN 1 AND 5),
    seller_rating smallint NOT NULL CHECK (seller_rating BETWEEN 1 AND 5),
    comment       text,
    received_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX feedback_seller ON feedback (seller_id, received_at);

-- One row per message: claimed before the provider call, completed after.
CREATE TABLE message_ledger (
    key                 text PRIMARY KEY,
    order_id            text NOT NULL,
    kind                text NOT NULL,
    channel             text NOT NULL,
    recipient           text NOT NULL,
    state               text NOT NULL
        CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'in_doubt', 'skipped')),
    attempts            integer NOT NULL DEFAULT 0,
    provider            text,
    provider_message_id text,
    error               text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz
);
CREATE INDEX message_ledger_order ON message_ledger (order_id);

-- Where messages go when no provider credentials are configured.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    ledger_key  text NOT NULL UNIQUE,
    channel     text NOT NULL,
    recipient   text NOT NULL,
    subject     text,
    body        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
