"""One vocabulary for the contents of a batch.

A batch is a ``dict[str, torch.Tensor]`` that concatenates the atoms of many molecules.
Every module reads and writes these keys; no other string literals name batch contents.
"""

#: atom positions, Å, ``[n_atoms, 3]``
R = "positions"
#: atomic numbers, ``[n_atoms]`` (long)
Z = "atomic_numbers"
#: index of the molecule each atom belongs to, ``[n_atoms]`` (long, sorted, 0..n_mol-1)
idx_m = "idx_m"
#: number of atoms of each molecule, ``[n_mol]`` (long)
n_atoms = "n_atoms"
#: per-molecule identifier (e.g. the QM9 index), ``[n_mol]`` (long)
mol_id = "mol_id"
#: edges as ``[2, n_edges]`` (i receives from j); optional, the model builds them if absent
edges = "edges"

#: diffusion step of each molecule, ``[n_mol]`` (long, 0..T)
t = "t"
#: diffusion step normalised to [0, 1] (t / T), ``[n_mol]`` (float)
t_norm = "t_norm"
#: noise added by the forward process, ``[n_atoms, 3]``
eps = "eps"

# model outputs
#: predicted noise, ``[n_atoms, 3]``
eps_pred = "eps_pred"
#: predicted normalised step per atom, ``[n_atoms]``
t_pred_atom = "t_pred_atom"
#: predicted normalised step per molecule (mean over atoms), ``[n_mol]``
t_pred = "t_pred"

# force fields (SPEC §8, §11)
#: energy per molecule, ``[n_mol]`` (eV); labels and predictions
energy = "energy"
#: forces, ``[n_atoms, 3]`` (eV/Å); labels and predictions
forces = "forces"
#: DeNS: forces fed to the network as an equivariant input (zero where not corrupted), ``[n_atoms, 3]``
force_input = "force_input"
#: DeNS: predicted noise / sigma per atom, ``[n_atoms, 3]``
noise_pred = "noise_pred"
