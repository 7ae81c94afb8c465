"""How the shipped learned optimizers transfer outside RL: each fits a small flax regression (an MLP 8-64-1 with
tanh, target sin(x_1), 256 points) in a plain optax loop for 300 steps, next to Adam at lr 1e-3, as in the README's
snippet. None of them was meta-trained on regression; the table says how far each gets.

    python analysis/optax_transfer.py
"""
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import open_es  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def final_loss(tx, steps=300):
    x = jax.random.normal(jax.random.PRNGKey(0), (256, 8))
    model = nn.Sequential([nn.Dense(64), nn.tanh, nn.Dense(1)])
    params = model.init(jax.random.PRNGKey(1), x)
    loss = jax.jit(lambda p: jnp.mean((model.apply(p, x) - jnp.sin(x[:, :1])) ** 2))

    def step(carry, _):
        params, state = carry
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, steps)
    return float(loss(model.init(jax.random.PRNGKey(1), x))), float(loss(params))


def main():
    files = sorted(glob.glob(os.path.join(ROOT, "trained", "authors", "*.npy")) +
                   glob.glob(os.path.join(ROOT, "trained", "*.msgpack")))
    rows = [("Adam, lr 1e-3", optax.adam(1e-3))] + [(os.path.relpath(f, ROOT), open_es.learned_transformation(f))
                                                    for f in files]
    print("| optimizer | loss after 300 steps (from the initial loss) |\n|---|---|")
    for name, tx in rows:
        start, end = final_loss(tx)
        print(f"| {name} | {end:.4f} (from {start:.3f}) |", flush=True)


if __name__ == "__main__":
    main()
