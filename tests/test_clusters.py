"""clusters: SLIM's sliding clusters, the state of weight yielding."""
import pytest
import torch

from minimal_loramoe.clusters import SlidingClusters


def test_distance_score_hand_example():
    c = SlidingClusters(dim=3, num_clusters=2, eps=0.0)
    c.centres.copy_(torch.tensor([[0., 0., 0.], [10., 10., 10.]]))
    c.var.copy_(torch.tensor([[1., 4., 1.], [1., 1., 1.]]))
    x = torch.tensor([[1., 4., 0.], [10., 10., 10.5]])
    # x0: cluster 0 gives max(1/1, 4/2, 0/1) = 2, cluster 1 gives 10 -> d = 2 - 1; x1: 0.5/1 from cluster 1
    torch.testing.assert_close(c.scores(x), torch.tensor([[2., 10.], [10.5, 0.5]]))
    torch.testing.assert_close(c.distance(x), torch.tensor([1.0, -0.5]))


def test_sliding_update_hand_example():
    c = SlidingClusters(dim=3, num_clusters=2, momentum=0.5, eps=0.0)
    c.centres.copy_(torch.tensor([[0., 0., 0.], [100., 100., 100.]]))
    c.num_updates.fill_(1)  # past the seeding step
    c.update(torch.tensor([[2., 2., 2.], [4., 4., 4.]]))  # both tokens nearest cluster 0, mean 3
    torch.testing.assert_close(c.centres[0], torch.full((3,), 1.5))  # 0 + 0.5 * (3 - 0)
    # var: 1 + 0.5 * (mean of (x - 1.5)^2 = (0.25 + 6.25) / 2 - 1)
    torch.testing.assert_close(c.var[0], torch.full((3,), 2.125))
    assert torch.equal(c.centres[1], torch.full((3,), 100.)) and torch.equal(c.var[1], torch.ones(3))
    torch.testing.assert_close(c.d_ref, torch.tensor(0.5 * (3.0 - 1)))  # scores 2 and 4 before the move


def test_the_first_update_seeds_the_clusters_from_the_batch():
    torch.manual_seed(0)
    c = SlidingClusters(dim=4, num_clusters=3)
    x = torch.randn(2, 5, 4)
    c.update(x)
    assert c.num_updates == 1 and torch.isin(c.centres, x).all()
    torch.testing.assert_close(c.var, x.reshape(-1, 4).var(0, unbiased=False).expand(3, 4))
    torch.testing.assert_close(c.d_ref, c.distance(x).mean())


@pytest.mark.parametrize("momentum", [0.0, 1.5])
def test_momentum_must_be_in_zero_one(momentum):
    with pytest.raises(ValueError, match="momentum"):
        SlidingClusters(4, 2, momentum=momentum)
