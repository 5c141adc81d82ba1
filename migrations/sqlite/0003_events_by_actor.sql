-- The audit trail: every event of one actor (a token subject), in store order.
CREATE INDEX events_by_actor ON events (actor, position);
