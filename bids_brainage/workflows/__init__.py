"""nipype workflow factories: ``participant.init_participant_wf`` and its preprocessing part."""
