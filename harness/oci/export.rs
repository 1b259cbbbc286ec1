pub fn export_archive(){}
