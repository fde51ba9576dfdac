import numpy as np
import torch

from worldmodel.command import fit_command_gain, integrate_commands


def test_the_command_saturates_at_the_wall_and_comes_back_from_it():
    """Clipped at every step, not once at the end: pushing 5 steps into a wall and 2 back leaves the command 2
    steps from the wall (a clip of the summed actions would leave it at the wall)."""
    gain = torch.tensor([[0.1]])
    actions = torch.tensor([[1.0] * 5 + [-1.0] * 2])[..., None]  # (1, 7, 1)
    out = integrate_commands(torch.tensor([[0.0]]), actions, gain, torch.tensor([-0.25]), torch.tensor([0.25]))
    np.testing.assert_allclose(out[0, :, 0].numpy(), [0.1, 0.2, 0.25, 0.25, 0.25, 0.15, 0.05], atol=1e-6)
    unbounded = integrate_commands(torch.tensor([[0.0]]), actions, gain)
    np.testing.assert_allclose(unbounded[0, -1, 0].item(), 0.3, atol=1e-6)


def test_the_fitted_gain_recovers_a_lagging_controller():
    """A hand that follows its target a few steps late and stops at the walls: the one-step least-squares gain
    is less than half the true one, the fitted command gain within 20% of it, per dimension (the fit asks for the
    command nearest the lagging hand, which is a little slower than the target)."""
    rng = np.random.default_rng(0)
    true_gain = np.array([0.01, 0.02])
    low, high = np.array([-0.2, -0.3]), np.array([0.2, 0.3])
    poses, actions = [], []
    for _ in range(20):
        a = np.clip(np.cumsum(rng.normal(0, 0.3, (150, 2)), axis=0), -1, 1)  # smooth, often saturating
        target = np.zeros(2)
        hand = np.zeros((150, 2))
        for t in range(1, 150):
            target = np.clip(target + a[t - 1] * true_gain, low, high)
            hand[t] = hand[t - 1] + 0.3 * (target - hand[t - 1])  # first-order lag
        poses.append(hand)
        actions.append(a)
    X, Y = np.concatenate([a[:-1] for a in actions]), np.concatenate([np.diff(p, axis=0) for p in poses])
    one_step = np.diag(np.linalg.lstsq(X, Y, rcond=None)[0])
    assert (one_step < 0.5 * true_gain).all()
    gain = np.asarray(fit_command_gain(poses, actions, low, high))
    np.testing.assert_allclose(np.diag(gain), true_gain, rtol=0.2)
    assert gain[0, 1] == gain[1, 0] == 0.0
