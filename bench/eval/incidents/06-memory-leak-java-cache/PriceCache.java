package com.acme.catalog.pricing;

import java.math.BigDecimal;
import java.util.HashMap;
import java.util.Map;

/** Remembers computed prices so repeat lookups skip the pricing rules. Added in 4.12.0. */
public final class PriceCache {
    // key includes the session's currency, locale and the request timestamp (minute)
    private final Map<PriceKey, BigDecimal> prices = new HashMap<>();

    public synchronized BigDecimal get(PriceKey key) {
        return prices.get(key);
    }

    public synchronized void remember(PriceKey key, BigDecimal price) {
        prices.put(key, price);
    }
}
