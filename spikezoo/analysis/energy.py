"""Energy per operation: the constants that turn MACs and SOPs into joules, with presets.

The default, ``"45nm-fp32"``, is what both papers use: a 32-bit floating-point multiply-accumulate
costs ``E_MAC = 4.6 pJ`` (3.7 pJ multiply + 0.9 pJ add) and an accumulate ``E_AC = 0.9 pJ``, in
45 nm CMOS (M. Horowitz, "Computing's energy problem", ISSCC 2014). The other presets take the
same paper's figures for other number formats.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_ENERGY", "ENERGY_PRESETS", "EnergyModel", "get_energy_model"]


@dataclass(frozen=True)
class EnergyModel:
    """Energy of one multiply-accumulate (``e_mac``) and one accumulate (``e_ac``), in picojoules.

    Example:
        >>> EnergyModel(e_mac=4.6, e_ac=0.9).energy_pj(macs=10, sops=100)
        136.0
    """

    e_mac: float
    e_ac: float
    name: str = "custom"

    def __post_init__(self) -> None:
        for field in ("e_mac", "e_ac"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{field} must be a non-negative number of pJ, got {value!r}")

    def energy_pj(self, macs: float, sops: float) -> float:
        """``e_mac * macs + e_ac * sops``, in picojoules."""
        return self.e_mac * macs + self.e_ac * sops


#: Horowitz (ISSCC 2014), 45 nm: add and multiply energies per number format.
ENERGY_PRESETS: dict[str, EnergyModel] = {
    "45nm-fp32": EnergyModel(e_mac=4.6, e_ac=0.9, name="45nm-fp32"),
    "45nm-fp16": EnergyModel(e_mac=1.5, e_ac=0.4, name="45nm-fp16"),
    "45nm-int32": EnergyModel(e_mac=3.2, e_ac=0.1, name="45nm-int32"),
    "45nm-int8": EnergyModel(e_mac=0.23, e_ac=0.03, name="45nm-int8"),
}

#: The papers' constants: E_MAC = 4.6 pJ, E_AC = 0.9 pJ.
DEFAULT_ENERGY = ENERGY_PRESETS["45nm-fp32"]


def get_energy_model(energy: str | EnergyModel) -> EnergyModel:
    """A preset by name (see :data:`ENERGY_PRESETS`), or an :class:`EnergyModel` unchanged."""
    if isinstance(energy, EnergyModel):
        return energy
    if energy not in ENERGY_PRESETS:
        raise ValueError(
            f"unknown energy preset {energy!r}; expected one of {sorted(ENERGY_PRESETS)} "
            "or an EnergyModel"
        )
    return ENERGY_PRESETS[energy]
