# inventory/reserve.py (released in 2.9.0 on Nov 22 14:50)
def reserve(conn, order):
    """Reserve stock for every line of an order, in one transaction."""
    with conn.transaction():
        # lines come in the order the customer added them to the cart
        for line in order.lines:
            conn.execute(
                "UPDATE stock SET reserved = reserved + %s WHERE sku = %s",
                (line.qty, line.sku),
            )
        conn.execute("UPDATE orders SET status = 'reserved' WHERE id = %s", (order.id,))
